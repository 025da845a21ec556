"""Fault injection: a run killed with SIGKILL at a failpoint (pipelines.faults) leaves no process
behind (its Dask cluster dies with it), and a rerun gives the store of a clean run (Zarr chunks,
COG pixels, STAC item ids)."""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import signal
import subprocess
import sys
import time
import uuid
from pathlib import Path

import pytest

pytestmark = pytest.mark.integration

REPO = Path(__file__).resolve().parents[2]
PRODUCTS = ["cloud_mask"]

# One run_local in its own process, on a LocalCluster started by start_cluster (as a DAG run's).
RUNNER = """
import json, sys
from pathlib import Path
from operators.dask_cluster import connect, start_cluster, stop_cluster
from pipelines.config import DaskConfig, parse_config
from pipelines.engine.run import run_local

archive, store, products = Path(sys.argv[1]), sys.argv[2], sys.argv[3].split(",")
info = json.loads((archive / "archive.json").read_text())
config = parse_config({
    "province": "tiny",
    "aoi": json.loads((archive / "province.geojson").read_text()),
    "crs": info["crs"],
    "tile_px": 128,
    "start": "2025-07-15",
    "end": "2025-07-25",
    "products": products,
    "stac": {"archive": str(archive), "max_cloud_cover": 100},
    "store": store,
})
handle = start_cluster(DaskConfig(n_workers=1, gpu_workers=0, memory_limit="2GiB"))
client = connect(handle.address)
try:
    print(json.dumps(run_local(config, client)), flush=True)
finally:
    client.close()
    stop_cluster(handle)
"""


def _processes_with(token: str) -> list[int]:
    """Pids of the processes whose environment holds ``token`` (a run and all it started)."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            environ = (entry / "environ").read_bytes()
        except OSError:
            continue
        if token.encode() in environ:
            found.append(int(entry.name))
    return found


def _run(archive: Path, store: Path, fault: str | None = None) -> tuple[int, str]:
    """Run in a subprocess (killed at ``fault`` if given); its exit code and output. Waits until
    no process it started is left (60 s at most), and fails if one is."""
    token = f"TERRAPIPE_FAULT_TEST={uuid.uuid4().hex}"
    env = {**os.environ, "PYTHONPATH": str(REPO), token.split("=")[0]: token.split("=")[1]}
    env.pop("TERRAPIPE_FAULT_AT", None)
    if fault:
        env["TERRAPIPE_FAULT_AT"] = fault
    proc = subprocess.run(
        [sys.executable, "-c", RUNNER, str(archive), str(store), ",".join(PRODUCTS)],
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    deadline = time.monotonic() + 60
    while _processes_with(token) and time.monotonic() < deadline:
        time.sleep(0.2)
    left = _processes_with(token)
    for pid in left:  # do not leak them into the rest of the suite
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
    assert not left, f"processes left behind by the run killed at {fault}: {left}"
    return proc.returncode, proc.stdout + proc.stderr


def _store_digest(store: Path) -> dict[str, object]:
    """What must be identical to a clean run's: the files (bookkeeping under runs/ aside), the
    bytes of every Zarr file, the pixels of every COG, the ids of the STAC items."""
    import numpy as np
    import rasterio

    files: dict[str, str] = {}
    for path in sorted(store.rglob("*")):
        rel = str(path.relative_to(store))
        if not path.is_file() or "/runs/" in f"/{rel}":
            continue
        if ".zarr/" in rel:
            files[rel] = hashlib.sha256(path.read_bytes()).hexdigest()
        elif rel.endswith(".tif"):
            with rasterio.open(path) as src:
                pixels = np.ascontiguousarray(src.read())
            files[rel] = hashlib.sha256(pixels.tobytes()).hexdigest()
        elif "/items/" in rel and rel.endswith(".json"):
            files[rel] = json.loads(path.read_text())["id"]
        else:
            files[rel] = "present"
    return files


#: The failpoints, in the order a run reaches them: each killed run resumes what the one before
#: it left, so reaching the next point shows it recovered from the previous kill.
CHAIN = ("cube.init", "writer.chunks", "cog.write", "stac.marker", "catalog.write")


def test_runs_killed_at_each_failpoint_leave_nothing_and_a_rerun_gives_a_clean_store(
    tiny_archive, tmp_path
):
    clean = tmp_path / "clean"
    code, out = _run(tiny_archive, clean)
    assert code == 0, out[-3000:]
    store = tmp_path / "store"
    for fault in CHAIN:
        code, out = _run(tiny_archive, store, fault)
        assert code == -signal.SIGKILL, f"the run did not die at {fault}: {out[-3000:]}"
    code, out = _run(tiny_archive, store)
    assert code == 0, out[-3000:]
    got, want = _store_digest(store), _store_digest(clean)
    assert sorted(got) == sorted(want)
    assert got == want
