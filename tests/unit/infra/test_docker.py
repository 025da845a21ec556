"""infra/docker/Dockerfile without a Docker daemon: its instructions parse, what it copies
exists and is in the build context (.dockerignore), its build arguments are declared, and its
install step is the README's install command (modulo the extras and the torch index)."""

from __future__ import annotations

import configparser
import fnmatch
import json
import re
import shlex
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[3]
DOCKERFILE = ROOT / "infra" / "docker" / "Dockerfile"
INSTRUCTIONS = {
    "ADD", "ARG", "CMD", "COPY", "ENTRYPOINT", "ENV", "EXPOSE", "FROM", "HEALTHCHECK", "LABEL",
    "ONBUILD", "RUN", "SHELL", "STOPSIGNAL", "USER", "VOLUME", "WORKDIR",
}  # fmt: skip
INDEX_OPTIONS = ("--index-url", "--extra-index-url", "-i")


def instructions(text: str) -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) of a Dockerfile: comments dropped, continuations joined."""
    out: list[tuple[str, str]] = []
    pending = ""
    for line in text.splitlines():
        if not pending and (not line.strip() or line.lstrip().startswith("#")):
            continue
        if pending and line.lstrip().startswith("#"):
            continue
        if line.endswith("\\"):
            pending += line[:-1] + " "
            continue
        full = (pending + line).strip()
        pending = ""
        word, _, rest = full.partition(" ")
        out.append((word.upper(), rest.strip()))
    assert not pending, "the Dockerfile ends inside a continued line"
    return out


def install_tokens(command: str) -> list[str]:
    """A pip install command's words, the index options dropped and the target as ``.[X]``."""
    words = shlex.split(command.split("#")[0])
    out: list[str] = []
    skip = False
    for word in words:
        if skip:
            skip = False
            continue
        if word in INDEX_OPTIONS:
            skip = True
            continue
        if word.startswith(tuple(f"{o}=" for o in INDEX_OPTIONS)):
            continue
        out.append(".[X]" if word == "." or word.startswith(".[") else word)
    return out


def readme_install_commands() -> list[str]:
    """The ``pip install`` lines of the README's install block (the one installing ``.``)."""
    blocks = re.findall(r"```bash\n(.*?)```", (ROOT / "README.md").read_text(), flags=re.S)
    for block in blocks:
        lines = [ln.strip() for ln in block.splitlines() if ln.strip().startswith("pip install")]
        if any(install_tokens(ln)[-1:] == [".[X]"] for ln in lines):
            return lines
    raise AssertionError("no README block installs the checkout with pip install")


def excluded(path: str, patterns: list[str]) -> bool:
    """Whether .dockerignore leaves ``path`` out of the build context (last match wins)."""
    parts = path.strip("/").split("/")
    verdict = False
    for pattern in patterns:
        negate = pattern.startswith("!")
        body = pattern[1:] if negate else pattern
        body = body.strip("/")
        for depth in range(1, len(parts) + 1):
            prefix = "/".join(parts[:depth])
            if fnmatch.fnmatch(prefix, body) or (
                body.startswith("**/") and fnmatch.fnmatch(parts[depth - 1], body[3:])
            ):
                verdict = not negate
                break
    return verdict


@pytest.fixture(scope="module")
def steps() -> list[tuple[str, str]]:
    return instructions(DOCKERFILE.read_text())


def test_instructions_parse(steps: list[tuple[str, str]]) -> None:
    assert all(word in INSTRUCTIONS for word, _ in steps), [w for w, _ in steps]
    words = [w for w, _ in steps]
    assert "FROM" in words and set(words[: words.index("FROM")]) <= {"ARG"}
    for word, args in steps:
        if word in ("ENTRYPOINT", "CMD"):
            assert isinstance(json.loads(args), list)  # exec form: signals reach the process


def test_build_arguments_are_declared_with_defaults(steps: list[tuple[str, str]]) -> None:
    declared = {args.split("=")[0]: args.partition("=")[2] for w, args in steps if w == "ARG"}
    used = set()
    for word, args in steps:
        if word in ("RUN", "FROM", "COPY", "ENV", "WORKDIR"):
            used |= set(re.findall(r"\$\{(\w+)\}", args))
    env = {m for w, a in steps if w == "ENV" for m in re.findall(r"(\w+)=", a)}
    assert used - env <= set(declared), used - set(declared) - env
    assert declared["TORCH_INDEX"].endswith("/whl/cpu")  # the CPU build by default
    extras = configparser.ConfigParser()
    extras.read(ROOT / "setup.cfg")
    defined = set(extras["options.extras_require"])
    assert set(declared["EXTRAS"].split(",")) <= defined
    assert "torch==" in extras["options.extras_require"]["ml"]


def test_copied_paths_exist_and_are_in_the_build_context(steps: list[tuple[str, str]]) -> None:
    patterns = [
        ln.strip()
        for ln in (ROOT / ".dockerignore").read_text().splitlines()
        if ln.strip() and not ln.startswith("#")
    ]
    sources = []
    for word, args in steps:
        if word == "COPY":
            words = [w for w in shlex.split(args) if not w.startswith("--")]
            sources += words[:-1]
    assert {"pipelines", "operators", "models", "dags", "setup.cfg"} <= set(sources)
    for source in sources:
        assert (ROOT / source).exists(), source
        assert not excluded(source, patterns), f"{source} is left out by .dockerignore"
    assert excluded(".venv", patterns) and excluded("var", patterns)
    assert excluded("pipelines/__pycache__", patterns)


def test_install_step_is_the_readmes(steps: list[tuple[str, str]]) -> None:
    runs = [args for word, args in steps if word == "RUN" and "pip install" in args]
    assert len(runs) == 1, runs
    (run,) = runs
    assert "--extra-index-url" in run and "${TORCH_INDEX}" in run
    readme = {tuple(install_tokens(line)) for line in readme_install_commands()}
    assert readme == {("pip", "install", "-c", "infra/constraints.txt", ".[X]")}, readme
    assert tuple(install_tokens(run)) in readme


def test_install_comparison_sees_a_different_command() -> None:
    """The comparison is not blind: another option or target differs."""
    assert install_tokens("pip install --no-deps '.[airflow]'") != ["pip", "install", ".[X]"]
    assert install_tokens("pip install -e '.[ml]'") != ["pip", "install", ".[X]"]
    assert install_tokens('pip install --extra-index-url "$I" ".[${EXTRAS}]"') == [
        "pip",
        "install",
        ".[X]",
    ]


def test_runs_as_the_charts_user(steps: list[tuple[str, str]]) -> None:
    users = [args for word, args in steps if word == "USER"]
    assert users[-1] == "50000"  # the official chart's default uid
    copies = [args for word, args in steps if word == "COPY" and "/opt/airflow/dags" in args]
    assert copies == ["--chown=50000:0 dags /opt/airflow/dags"]
