"""Fault injection: runs killed with SIGKILL at the failpoints (pipelines.faults), a Dask worker
killed mid-task, a run's whole cluster killed, the S3 server stopped and restarted mid-run, and
`terrapipe run` cancelled by SIGINT and SIGTERM. Each leaves no process behind, and a rerun gives
the store of one clean run computed once for the module (Zarr bytes, COG pixels, STAC item ids).
"""

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
from collections.abc import Iterator, Mapping
from pathlib import Path

import pytest

pytestmark = pytest.mark.integration

REPO = Path(__file__).resolve().parents[2]
PRODUCTS = ["cloud_mask"]
#: The run's settings (RUNNER's and the CLI config's): the tiny archive, cloud_mask only.
RUN_SETTINGS = {
    "province": "tiny",
    "tile_px": 128,
    "start": "2025-07-15",
    "end": "2025-07-25",
    "products": PRODUCTS,
}
CLUSTER = {"n_workers": 1, "gpu_workers": 0, "memory_limit": "2GiB"}
#: The environment variable that marks a test's run and every process it starts.
TOKEN_NAME = "TERRAPIPE_FAULT_TEST"

# One run_local in its own process, on a LocalCluster started by start_cluster (as a DAG run's;
# it boots in its own process while this one imports the engine). TEST_KILL_WORKER (a flag
# file): the first task a worker starts kills that worker (once: the nanny's new worker runs
# on). A failure prints its class (pipelines.errors.failure_class) and exits as the CLI does:
# 4 when transient, else 1.
RUNNER = """
import json, os, signal, sys, threading
from pathlib import Path
from operators.dask_cluster import connect, start_cluster, stop_cluster
from pipelines.config import DaskConfig, parse_config

started = {}
boot = threading.Thread(
    target=lambda: started.update(handle=start_cluster(DaskConfig(**json.loads(sys.argv[4]))))
)
boot.start()
from distributed import WorkerPlugin
from pipelines.engine.run import run_local
from pipelines.errors import failure_class

class KillOnce(WorkerPlugin):
    def __init__(self, flag):
        self.flag = flag
    def transition(self, key, start, finish, **kwargs):
        if finish != "executing":
            return
        try:
            fd = os.open(self.flag, os.O_WRONLY | os.O_CREAT | os.O_EXCL)
        except FileExistsError:
            return
        os.write(fd, str(os.getpid()).encode())
        os.close(fd)
        os.kill(os.getpid(), signal.SIGKILL)

archive, store, settings = Path(sys.argv[1]), sys.argv[2], json.loads(sys.argv[3])
info = json.loads((archive / "archive.json").read_text())
config = parse_config({
    **settings,
    "aoi": json.loads((archive / "province.geojson").read_text()),
    "crs": info["crs"],
    "stac": {"archive": str(archive), "max_cloud_cover": 100},
    "store": store,
})
boot.join()
handle = started["handle"]
client = connect(handle.address)
if os.environ.get("TEST_KILL_WORKER"):
    client.register_plugin(KillOnce(os.environ["TEST_KILL_WORKER"]))
try:
    print(json.dumps(run_local(config, client)), flush=True)
except Exception as exc:
    kind = failure_class(exc)
    print(json.dumps({"failure_class": kind, "error": f"{type(exc).__name__}: {exc}"}), flush=True)
    sys.exit(4 if kind == "transient" else 1)
finally:
    client.close()
    stop_cluster(handle)
"""


def _processes_with(token: str) -> list[int]:
    """Pids of the processes whose environment holds ``token`` (a run and all it started),
    this test process aside."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit() or int(entry.name) == os.getpid():
            continue
        try:
            environ = (entry / "environ").read_bytes()
        except OSError:
            continue
        if token.encode() in environ:
            found.append(int(entry.name))
    return found


def _assert_none_left(token: str, what: str) -> None:
    """Wait (60 s at most) until no process marked ``token`` is left; fail if one is (after
    killing it, so as not to leak it into the rest of the suite)."""
    deadline = time.monotonic() + 60
    while _processes_with(token) and time.monotonic() < deadline:
        time.sleep(0.2)
    left = _processes_with(token)
    for pid in left:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
    assert not left, f"processes left behind by {what}: {left}"


def _env(token: str, fault: str | None = None, **extra: str) -> dict[str, str]:
    env = {**os.environ, "PYTHONPATH": str(REPO), TOKEN_NAME: token, **extra}
    for name in ("TERRAPIPE_FAULT_AT", "TERRAPIPE_FAULT_FLAG", "TERRAPIPE_FAULT_ACTION"):
        if name not in extra:
            env.pop(name, None)
    if fault:
        env["TERRAPIPE_FAULT_AT"] = fault
    return env


def _start(
    archive: Path, store: str, fault: str | None = None, **extra: str
) -> tuple[subprocess.Popen[str], str]:
    token = uuid.uuid4().hex
    args = [str(archive), store, json.dumps(RUN_SETTINGS), json.dumps(CLUSTER)]
    proc = subprocess.Popen(
        [sys.executable, "-c", RUNNER, *args],
        env=_env(token, fault, **extra),
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    return proc, token


def _finish(proc: subprocess.Popen[str], token: str, what: str) -> tuple[int, str]:
    out, _ = proc.communicate(timeout=600)
    _assert_none_left(token, what)
    return proc.returncode, out


def _run(archive: Path, store: str, fault: str | None = None, **extra: str) -> tuple[int, str]:
    """Run in a subprocess (killed at ``fault`` if given); its exit code and output. Fails if a
    process it started is left behind."""
    proc, token = _start(archive, store, fault, **extra)
    return _finish(proc, token, f"the run killed at {fault}" if fault else "a run")


def _wait_for(path: Path, proc: subprocess.Popen[str], timeout: float = 300) -> None:
    """Wait until ``path`` exists (a held failpoint reached); fail if ``proc`` ends first."""
    deadline = time.monotonic() + timeout
    while not path.exists():
        if proc.poll() is not None or time.monotonic() > deadline:
            proc.kill()
            out = proc.communicate()[0] or ""
            pytest.fail(f"the run did not reach its failpoint: {out[-3000:]}")
        time.sleep(0.1)


def _store_digest(store: Path) -> dict[str, object]:
    """What must be identical to a clean run's: the files (bookkeeping under runs/ aside), the
    bytes of every Zarr file, the pixels of every COG, the ids of the STAC items."""
    import numpy as np
    import rasterio

    files: dict[str, object] = {}
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


def _assert_clean(got: Mapping[str, object], want: Mapping[str, object]) -> None:
    assert sorted(got) == sorted(want)
    assert got == want


@pytest.fixture(scope="module")
def clean(tiny_archive: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, object]:
    """The digest of one clean run's store: every case of the module compares with it."""
    store = tmp_path_factory.mktemp("clean") / "store"
    code, out = _run(tiny_archive, str(store))
    assert code == 0, out[-3000:]
    return _store_digest(store)


#: The failpoints, in the order a run reaches them: each killed run resumes what the one before
#: it left, so reaching the next point shows it recovered from the previous kill.
CHAIN = ("cube.init", "writer.chunks", "cog.write", "stac.marker", "catalog.write")


def test_runs_killed_at_each_failpoint_or_losing_a_worker_recover_to_a_clean_store(
    tiny_archive, tmp_path, clean
):
    """SIGKILL at each failpoint in turn on one store. The run killed at ``cog.write`` also loses
    its Dask worker in its first task: reaching ``cog.write`` (after the tile's compute) shows
    that the nanny's new worker took the task over."""
    store = tmp_path / "store"
    lost = tmp_path / "worker-killed"
    for fault in CHAIN:
        extra = {"TEST_KILL_WORKER": str(lost)} if fault == "cog.write" else {}
        code, out = _run(tiny_archive, str(store), fault, **extra)
        assert code == -signal.SIGKILL, f"the run did not die at {fault}: {out[-3000:]}"
    worker = int(lost.read_text())  # the worker that killed itself mid-task
    with pytest.raises(ProcessLookupError):
        os.kill(worker, 0)
    code, out = _run(tiny_archive, str(store))
    assert code == 0, out[-3000:]
    _assert_clean(_store_digest(store), clean)


def test_a_run_whose_cluster_is_killed_starts_one_and_gives_a_clean_store(
    tiny_archive, tmp_path, clean, monkeypatch
):
    """The DAG's task bodies on one run: its LocalCluster (scheduler, nanny and worker: the
    process group) is killed before its last process task, which finds it gone and starts one
    for itself (operators.dask_cluster.run_client) instead of waiting on the dead address."""
    pytest.importorskip("airflow")
    from operators.production import (
        RunManifest,
        finalize_task,
        prepare_task,
        process_task,
        start_dask_task,
        stop_dask_task,
    )
    from pipelines.engine.plan import plan_run
    from pipelines.processes import is_alive
    from tests.integration.test_production import tiny_config

    token = uuid.uuid4().hex
    monkeypatch.setenv(TOKEN_NAME, token)  # the clusters this test starts carry it
    store = tmp_path / "store"
    config = tiny_config(tiny_archive, str(store), products=PRODUCTS, dask=CLUSTER)
    planned = plan_run(config)
    info = RunManifest.of(planned, config, False).to_xcom()
    cluster = start_dask_task(info)
    prepare_task(info)
    tasks = [(g, b) for g, batches in info["pending"].items() for b in batches]
    manifests = [process_task(b, info, cluster, g) for g, b in tasks[:-1]]
    pid = cluster["pid"]
    assert isinstance(pid, int)
    os.killpg(pid, signal.SIGKILL)
    deadline = time.monotonic() + 30  # until it is reaped, not only exiting
    while (is_alive(pid) or _processes_with(token)) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert not is_alive(pid) and not _processes_with(token), "the cluster did not die"
    group, batch = tasks[-1]
    manifests.append(process_task(batch, info, cluster, group))  # on a cluster of its own
    assert int(manifests[-1]["written"]) > 0
    finalize_task(info, manifests)
    stop_dask_task(cluster)
    _assert_none_left(token, "the task bodies' clusters")
    _assert_clean(_store_digest(store), clean)


def test_an_s3_server_stopped_mid_run_fails_it_as_transient_and_a_rerun_is_clean(
    tiny_archive, tmp_path, clean
):
    """The run holds once its first tile's chunks are in S3; the server is stopped there and
    the run goes on: transient (exit 4, retried by a scheduler). The server is restarted on the
    same endpoint (moto keeps nothing: an empty bucket) and a rerun gives the clean store."""
    import fsspec

    from pipelines.testing.s3 import start_s3_server, stop_s3_server

    server = start_s3_server("terrapipe-faults")
    port = int(server.endpoint_url.rsplit(":", 1)[1])
    store = server.url("store")
    held = tmp_path / "held"
    try:
        proc, token = _start(
            tiny_archive,
            store,
            "writer.chunks",
            TERRAPIPE_FAULT_ACTION="hold",
            TERRAPIPE_FAULT_FLAG=str(held),
            **server.env,
        )
        _wait_for(held, proc)
        stop_s3_server(server)
        held.unlink()  # the run goes on against the stopped server
        code, out = _finish(proc, token, "the run whose S3 server stopped")
        assert code == 4, out[-3000:]
        assert json.loads(out.strip().splitlines()[-1])["failure_class"] == "transient"

        server = start_s3_server("terrapipe-faults", port=port)
        code, out = _run(tiny_archive, store, **server.env)
        assert code == 0, out[-3000:]
        fs = fsspec.filesystem(
            "s3",
            key="testing",
            secret="testing",
            client_kwargs={"endpoint_url": server.endpoint_url, "region_name": "us-east-1"},
        )
        local = tmp_path / "copy"
        fs.get(store.removeprefix("s3://") + "/", str(local), recursive=True)
    finally:
        stop_s3_server(server)
    _assert_clean(_store_digest(local), clean)


def _cli_config(tmp_path: Path, archive: Path) -> Path:
    import yaml

    info = json.loads((archive / "archive.json").read_text())
    cfg = {
        **RUN_SETTINGS,
        "aoi": str(archive / "province.geojson"),
        "crs": info["crs"],
        "stac": {"archive": str(archive), "max_cloud_cover": 100},
        "store": str(tmp_path / "store"),
        "dask": CLUSTER,
    }
    path = tmp_path / "tiny.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return path


@contextlib.contextmanager
def _cli(config: Path, home: Path, **extra: str) -> Iterator[tuple[subprocess.Popen[str], str]]:
    token = uuid.uuid4().hex
    env = _env(token, TERRAPIPE_HOME=str(home), **extra)
    env.pop("AIRFLOW_HOME", None)
    proc = subprocess.Popen(
        [sys.executable, "-m", "pipelines.cli", "run", str(config)],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        yield proc, token
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
        _assert_none_left(token, "terrapipe run")


def test_sigint_and_sigterm_cancel_terrapipe_run_and_a_rerun_is_clean(
    tiny_archive, tmp_path, clean
):
    """A real embedded `terrapipe run` (Airflow dag.test) held in its first process task, once
    its first tile's chunks are written, then sent SIGINT (the next one SIGTERM): exit 128 + the
    signal, one line on stderr, the JSON result on stdout says cancelled, its Dask cluster
    (scheduler, nanny, worker) and STAC server are gone; a rerun gives the clean store."""
    config = _cli_config(tmp_path, tiny_archive)
    home = tmp_path / "home"
    for sig in (signal.SIGINT, signal.SIGTERM):
        held = tmp_path / f"held-{sig.name}"
        hold = {
            "TERRAPIPE_FAULT_AT": "writer.chunks",
            "TERRAPIPE_FAULT_ACTION": "hold",
            "TERRAPIPE_FAULT_FLAG": str(held),
        }
        with _cli(config, home, **hold) as (proc, _):
            _wait_for(held, proc)
            proc.send_signal(sig)
            out, err = proc.communicate(timeout=300)
        assert proc.returncode == 128 + sig, err[-3000:]
        result = json.loads(out)  # stdout holds the JSON result only
        assert (result["state"], result["exit_code"]) == ("cancelled", 128 + sig)
        last = err.strip().splitlines()[-1]
        assert last.startswith("cancelled:") and sig.name in last, err[-3000:]
    with _cli(config, home) as (proc, _):
        out, err = proc.communicate(timeout=600)
    assert proc.returncode == 0, err[-3000:]
    assert json.loads(out)["state"] == "success"
    _assert_clean(_store_digest(tmp_path / "store"), clean)
