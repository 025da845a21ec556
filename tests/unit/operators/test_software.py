"""The software check of a cluster's workers: digests, dependencies and the comparison."""

from __future__ import annotations

from pathlib import Path

import pytest

from operators import software
from operators.software import Software, compare_software


def _tree(root: Path) -> dict[str, Path]:
    (root / "pkg" / "sub").mkdir(parents=True)
    (root / "pkg" / "__pycache__").mkdir()
    (root / "pkg" / "__init__.py").write_text("VALUE = 1\n")
    (root / "pkg" / "sub" / "stage.py").write_text("def f(x):\n    return x + 1\n")
    (root / "pkg" / "calendar.yaml").write_text("wheat: [3, 7]\n")
    (root / "pkg" / "__pycache__" / "stage.cpython-311.pyc").write_bytes(b"\0compiled")
    (root / "pkg" / "logo.png").write_bytes(b"\x89PNG")
    return {"pkg": root / "pkg"}


def _digest(roots: dict[str, Path]) -> str:
    return software.digest_files(software.package_files(roots))


def test_the_digest_reads_code_and_data_files_and_leaves_caches_and_pictures_out(tmp_path):
    roots = _tree(tmp_path)
    listed = [relative for relative, _ in software.package_files(roots)]
    assert listed == ["pkg/__init__.py", "pkg/calendar.yaml", "pkg/sub/stage.py"]
    before = _digest(roots)
    (tmp_path / "pkg" / "__pycache__" / "stage.cpython-311.pyc").write_bytes(b"other")
    (tmp_path / "pkg" / "logo.png").write_bytes(b"other")
    assert _digest(roots) == before


@pytest.mark.parametrize(
    "change",
    [
        lambda root: (root / "pkg" / "sub" / "stage.py").write_text("def f(x):\n    return 2\n"),
        lambda root: (root / "pkg" / "calendar.yaml").write_text("wheat: [4, 7]\n"),
        lambda root: (root / "pkg" / "sub" / "stage.py").rename(root / "pkg" / "stage.py"),
        lambda root: (root / "pkg" / "sub" / "new.py").write_text(""),
    ],
    ids=["code", "calendar", "moved", "added"],
)
def test_any_change_to_the_packages_files_changes_the_digest(tmp_path, change):
    roots = _tree(tmp_path)
    before = _digest(roots)
    change(tmp_path)
    assert _digest(roots) != before


def test_the_installed_packages_digest_is_this_checkouts():
    roots = software.package_roots()
    assert set(roots) == {"pipelines", "models", "operators"}
    assert software.code_digest() == _digest(roots)
    listed = {relative for relative, _ in software.package_files(roots)}
    assert {"operators/software.py", "models/weights/super_resolution.pt"} <= listed
    assert "pipelines/data/central_europe_crops.yaml" in listed


def test_the_compared_dependencies_are_those_that_compute_products():
    names = software.computing_dependencies()
    assert {"numpy", "opencv-python-headless", "rasterio", "torch", "zarr"} <= set(names)
    assert not {"pytest", "apache-airflow", "ruff", "terrapipe"} & set(names)
    mine = software.installed_software()
    assert dict(mine.packages)["numpy"] == __import__("numpy").__version__


def _software(code: str = "a" * 64, numpy: str = "2.4.6", python: str = "3.11.7") -> Software:
    return Software("0.1.0", code, python, (("numpy", numpy), ("torch", "2.13.0")))


def test_workers_with_the_same_software_pass():
    report = compare_software(_software(), {"tcp://w1:1": _software(), "tcp://w2:1": _software()})
    assert report.workers == 2
    assert report.other_code == {} and report.other_packages == {}


def test_a_worker_with_other_code_is_named_with_its_digest():
    other = _software(code="b" * 64)
    report = compare_software(_software(), {"tcp://w1:1": _software(), "tcp://w2:1": other})
    assert report.other_code == {"tcp://w2:1": "terrapipe 0.1.0, code bbbbbbbbbbbb"}
    assert report.other_packages == {}


def test_a_worker_that_cannot_answer_is_named_with_its_error():
    error = ModuleNotFoundError("No module named 'operators.software'")
    report = compare_software(_software(), {"tcp://w1:1": error})
    assert "ModuleNotFoundError" in report.other_code["tcp://w1:1"]
    assert "operators.software" in report.other_code["tcp://w1:1"]


def test_other_package_versions_are_reported_not_counted_as_other_code():
    other = _software(numpy="2.3.0", python="3.12.1")
    report = compare_software(_software(), {"tcp://w1:1": other})
    assert report.other_code == {}
    differing = ("python 3.11.7 -> 3.12.1", "numpy 2.4.6 -> 2.3.0")
    assert report.other_packages == {"tcp://w1:1": differing}


class _Client:
    """What :func:`check_cluster_software` asks of a client: ``run`` and ``scheduler_info``."""

    def __init__(self, answers: dict[str, object]) -> None:
        self.answers = answers

    def run(self, function, on_error):
        assert function is software.installed_software and on_error == "return"
        return self.answers

    def scheduler_info(self, n_workers):
        workers = {a: {"name": f"gpu-{i}"} for i, a in enumerate(self.answers)}
        return {"address": "tcp://scheduler:8786", "workers": workers}


def test_the_check_logs_other_package_versions_and_passes(caplog):
    mine = software.installed_software()
    numpy = dict(mine.packages)["numpy"]
    other = Software(
        mine.version,
        mine.code,
        mine.python,
        tuple((n, "0.0" if n == "numpy" else v) for n, v in mine.packages),
    )
    with caplog.at_level("WARNING", logger="operators.software"):
        report = software.check_cluster_software(_Client({"tcp://w:1": other}))
    assert report.other_code == {}
    assert f"tcp://w:1 (gpu-0): numpy {numpy} -> 0.0" in caplog.text


def test_the_check_fails_naming_each_worker_with_other_code():
    mine = software.installed_software()
    other = Software(mine.version, "c" * 64, mine.python, mine.packages)
    client = _Client({"tcp://w:1": mine, "tcp://w:2": other})
    with pytest.raises(software.BadInputError) as raised:
        software.check_cluster_software(client)
    message = str(raised.value)
    assert message.startswith("software of the Dask workers at tcp://scheduler:8786")
    assert "1 of 2 worker(s) run other code" in message
    assert "tcp://w:2 (gpu-1): terrapipe 0.1.0, code cccccccccccc" in message
    assert "tcp://w:1" not in message
    assert mine.code in message


def test_a_build_label_is_not_another_version():
    gpu = Software("0.1.0", "a" * 64, "3.11.7", (("numpy", "2.4.6"), ("torch", "2.13.0+cu126")))
    cpu = Software("0.1.0", "a" * 64, "3.11.7", (("numpy", "2.4.6"), ("torch", "2.13.0+cpu")))
    assert compare_software(cpu, {"tcp://gpu:1": gpu}).other_packages == {}
    newer = Software("0.1.0", "a" * 64, "3.11.7", (("numpy", "2.4.6"), ("torch", "2.14.0+cu126")))
    report = compare_software(cpu, {"tcp://gpu:1": newer})
    assert report.other_packages == {"tcp://gpu:1": ("torch 2.13.0+cpu -> 2.14.0+cu126",)}
