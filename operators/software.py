"""The software a run computes with, checked on every worker of the Dask cluster.

Tile tasks reach Dask workers as references to terrapipe's functions (``module:function``), so
a worker runs the stage code *it* has installed, while the products are stamped with the stage
versions of the process that planned the run. A cluster the run did not start (dask-kubernetes,
dask-gateway, a long-lived deployment) can run another image than the Airflow tasks: after a
half-finished rollout, or a worker group whose image tag was not bumped. Its products would be
computed by one version of the code and labelled as another, with nothing to show it.

Each client the project opens to a cluster (:func:`operators.dask_cluster.connect`) therefore
asks every worker for its :class:`Software` and compares it with its own:

- terrapipe's own files (the code, the crop calendars, the model weights and cards) must be the
  same, to the byte (:func:`code_digest`; the package version alone is not enough: a build from
  another commit carries the same one). A worker with other files, or without the check at all
  (an older terrapipe, or none), fails the task with a :class:`~pipelines.errors.BadInputError`
  that names the workers and both digests: not retried, since only a deployment mends it;
- the versions of terrapipe's dependencies that compute products (numpy, OpenCV, torch, ...)
  are compared too, and a difference is logged as a warning: the same algorithm, perhaps not the
  same bits (a GPU worker group's torch build may differ on purpose).

A worker that joins the cluster while a task runs is checked by the next task that connects.
"""

from __future__ import annotations

import functools
import hashlib
import importlib.metadata
import logging
import sys
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from pipelines.errors import BadInputError

if TYPE_CHECKING:
    from distributed import Client

#: The distribution whose files and dependencies are compared.
DISTRIBUTION = "terrapipe"
#: Its top-level packages that workers import (the stages, the models, the worker preload).
PACKAGES = ("pipelines", "models", "operators")
#: The files of those packages that decide what a task computes: code, crop calendars and
#: province defaults, model weights and their cards (not the web page's static files).
CODE_SUFFIXES = (".py", ".yaml", ".json", ".pt")
#: The optional dependencies (extras) whose packages compute products: the networks' torch.
COMPUTING_EXTRAS = ("ml",)
#: Characters of a digest shown in messages.
SHORT_DIGEST = 12

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Software:
    """What one process computes with: terrapipe's version and the sha256 of its files
    (:func:`code_digest`), Python's version, and the installed version of each dependency that
    computes products (None where it is not installed)."""

    version: str
    code: str
    python: str
    packages: tuple[tuple[str, str | None], ...]

    def describe(self) -> str:
        """``terrapipe 0.1.0, code 3f2a9c01b7de`` (the digest shortened)."""
        return f"{DISTRIBUTION} {self.version}, code {self.code[:SHORT_DIGEST]}"


def package_files(roots: Mapping[str, Path]) -> list[tuple[str, Path]]:
    """The files of each package root (``name -> folder``) that :data:`CODE_SUFFIXES` select,
    as (path relative to the root's parent, path), sorted; compiled caches are left out."""
    files = []
    for name, root in roots.items():
        for path in root.rglob("*"):
            if path.suffix in CODE_SUFFIXES and "__pycache__" not in path.parts and path.is_file():
                files.append((f"{name}/{path.relative_to(root).as_posix()}", path))
    return sorted(files)


def digest_files(files: list[tuple[str, Path]]) -> str:
    """sha256 (hex) over each file's relative path and bytes, in the order given."""
    digest = hashlib.sha256()
    for relative, path in files:
        data = path.read_bytes()
        digest.update(f"{relative}\0{len(data)}\0".encode())
        digest.update(data)
    return digest.hexdigest()


def package_roots() -> dict[str, Path]:
    """The folder of each of :data:`PACKAGES` as this process imports it."""
    return {name: Path(importlib.import_module(name).__file__ or "").parent for name in PACKAGES}


def code_digest() -> str:
    """sha256 of the files of terrapipe's packages this process imports (about 1 MB; read once
    a process through :func:`installed_software`)."""
    return digest_files(package_files(package_roots()))


def computing_dependencies() -> tuple[str, ...]:
    """The names of terrapipe's declared dependencies that compute products: those installed
    with it, and those of :data:`COMPUTING_EXTRAS`, in the order of its metadata."""
    from packaging.requirements import Requirement

    names = []
    for line in importlib.metadata.requires(DISTRIBUTION) or []:
        requirement = Requirement(line)
        marker = requirement.marker
        computes = marker is None or any(marker.evaluate({"extra": e}) for e in COMPUTING_EXTRAS)
        if computes and requirement.name != DISTRIBUTION:
            names.append(requirement.name)
    return tuple(dict.fromkeys(names))


def installed_version(name: str) -> str | None:
    """The installed version of distribution ``name``, None when it is not installed."""
    try:
        return importlib.metadata.version(name)
    except importlib.metadata.PackageNotFoundError:
        return None


def public_version(version: str | None) -> str | None:
    """``version`` without its build label (PEP 440's local part: torch's ``+cpu``, ``+cu126``):
    builds of one release for other hardware compute the same algorithm."""
    return None if version is None else version.partition("+")[0]


@functools.cache
def installed_software() -> Software:
    """This process's :class:`Software` (what :func:`check_cluster_software` asks each worker
    for)."""
    return Software(
        version=installed_version(DISTRIBUTION) or "not installed",
        code=code_digest(),
        python=".".join(str(v) for v in sys.version_info[:3]),
        packages=tuple((name, installed_version(name)) for name in computing_dependencies()),
    )


@dataclass(frozen=True)
class SoftwareReport:
    """The outcome of comparing a cluster's workers with this process: ``other_code`` maps a
    worker to what it runs (its :meth:`Software.describe`, or why it could not answer);
    ``other_packages`` maps a worker to its differing packages (``name local -> worker``)."""

    local: Software
    workers: int
    other_code: dict[str, str]
    other_packages: dict[str, tuple[str, ...]]


def compare_software(
    local: Software, answers: Mapping[str, Software | BaseException]
) -> SoftwareReport:
    """Compare each worker's answer to :func:`installed_software` (or the error it returned)
    with ``local``."""
    other_code: dict[str, str] = {}
    other_packages: dict[str, tuple[str, ...]] = {}
    for worker, answer in sorted(answers.items()):
        if not isinstance(answer, Software):
            other_code[worker] = (
                f"cannot run terrapipe's software check ({type(answer).__name__}: {answer})"
            )
            continue
        if answer.code != local.code:
            other_code[worker] = answer.describe()
        ours = {"python": local.python, **dict(local.packages)}
        theirs = {"python": answer.python, **dict(answer.packages)}
        differing = tuple(
            f"{name} {version} -> {theirs.get(name)}"
            for name, version in ours.items()
            if public_version(theirs.get(name)) != public_version(version)
        )
        if differing:
            other_packages[worker] = differing
    return SoftwareReport(local, len(answers), other_code, other_packages)


def check_cluster_software(client: Client) -> SoftwareReport:
    """Ask every worker of ``client``'s cluster for its :class:`Software`; BadInputError naming
    the workers whose terrapipe files differ from this process's (or that cannot answer); a
    logged warning for differing dependency versions. Returns the comparison."""
    answers = client.run(installed_software, on_error="return")
    info = client.scheduler_info(n_workers=-1)
    names = {a: w.get("name") for a, w in info.get("workers", {}).items()}
    report = compare_software(
        installed_software(),
        {f"{a} ({names[a]})" if names.get(a) is not None else a: v for a, v in answers.items()},
    )
    if report.other_packages:
        log.warning(
            "Dask workers with other package versions than this process (the same code; the "
            "products may differ in their last bits): %s",
            "; ".join(f"{w}: {', '.join(d)}" for w, d in report.other_packages.items()),
        )
    if report.other_code:
        address = str(info.get("address", "?"))
        listed = "; ".join(f"{w}: {what}" for w, what in report.other_code.items())
        raise BadInputError(
            f"software of the Dask workers at {address}",
            f"{len(report.other_code)} of {report.workers} worker(s) run other code",
            f"{report.local.describe()} on every worker, as in this process",
            f"Workers: {listed}. Run the workers from the same image (or install) as the "
            "Airflow tasks: a worker with other code computes products that this run would "
            f"label with its own stage versions. Full digest here: {report.local.code}",
        )
    return report
