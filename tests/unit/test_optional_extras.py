"""torch (``terrapipe[ml]``) and Airflow (``terrapipe[airflow]``) are optional extras.

A child interpreter whose import system refuses both (as if they were not installed) imports the
stages, lists the registry and runs ``terrapipe stage cloud_mask`` through ``pipelines.cli.main``
(which attaches every command at start-up); the commands that need an extra exit 2 with one line
naming it.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np

from pipelines.classes import CloudClass
from pipelines.testing.scenes import write_geotiff

ROOT = Path(__file__).resolve().parents[2]

#: Refuse the extras' modules: ``import torch`` raises ModuleNotFoundError and
#: ``importlib.util.find_spec("torch")`` is None, as when the package is not installed.
PROLOGUE = """
import sys
for name in ("torch", "airflow"):
    sys.modules[name] = None
"""

CHILD = """
import json
import sys

import pipelines.stages
from pipelines.cli import main

s2, out = sys.argv[1], sys.argv[2]
commands = {
    "cloud_mask": ["stage", "cloud_mask", "--s2", s2, "--out", out + "/mask.tif"],
    "dehaze_learned": ["stage", "dehaze", "--method", "learned", "--s2", s2, "--out", out + "/d"],
    "super_resolution": ["stage", "super_resolution", "--s2", s2, "--out", out + "/sr.tif"],
    "run": ["run"],
}
result = {"stages": pipelines.stages.list_stages()}
for name, argv in commands.items():
    print("---", file=sys.stderr, flush=True)
    result[name] = main(argv)
extras = ("torch", "airflow")
result["loaded"] = [m for m, mod in sys.modules.items() if mod and m.split(".")[0] in extras]
print(json.dumps(result))
"""


def _scene(path: Path) -> Path:
    """A 64 x 64 L2A scene: vegetation, with SCL saying cloud (8) on the top quarter."""
    rng = np.random.default_rng(0)
    bands = ["B02", "B03", "B04", "B08", "B11", "B12"]
    base = np.array([400, 700, 500, 3500, 2000, 1000], dtype="float64")[:, None, None]
    dn = (base * (1 + 0.05 * rng.standard_normal((len(bands), 64, 64)))).astype("uint16")
    scl = np.full((1, 64, 64), 4, "uint16")
    scl[0, :16] = 8
    return write_geotiff(path, np.concatenate([dn, scl]), [*bands, "SCL"])


def test_stages_and_stage_cli_run_without_torch_and_airflow(tmp_path):
    s2 = _scene(tmp_path / "s2.tif")
    proc = subprocess.run(
        [sys.executable, "-c", PROLOGUE + CHILD, str(s2), str(tmp_path)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    lines = proc.stdout.strip().splitlines()
    result = json.loads(lines[-1])
    assert {"cloud_mask", "dehaze_learned", "super_resolution"} <= set(result["stages"])
    assert result["loaded"] == []

    assert result["cloud_mask"] == 0, proc.stderr
    summary = json.loads(lines[-2])
    assert summary["stage"] == "cloud_mask"
    cloud = summary["cloud_mask_fractions"][str(int(CloudClass.CLOUD))]
    assert 0.25 <= cloud <= 0.3  # the SCL cloud quarter, dilated
    assert (tmp_path / "mask.tif").exists()

    needs = {"dehaze_learned": "ml", "super_resolution": "ml", "run": "airflow"}
    messages = [m.strip() for m in proc.stderr.split("---\n")[2:]]
    for (command, extra), message in zip(needs.items(), messages, strict=True):
        assert result[command] == 2, message
        assert "\n" not in message and message.startswith("error:"), message
        assert f"pip install 'terrapipe[{extra}]'" in message, message
    assert not (tmp_path / "d").exists() and not (tmp_path / "sr.tif").exists()
