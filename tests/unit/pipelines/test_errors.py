"""The one retry policy: what may pass on retry, by type and by cause."""

from __future__ import annotations

import errno
from pathlib import Path

import pytest

from pipelines.errors import (
    BadInputError,
    IncompleteRunError,
    NoScenesError,
    TransientIOError,
    failure_class,
    is_transient,
)


def _caused(outer: BaseException, inner: BaseException) -> BaseException:
    """``outer`` raised ``from inner`` (a real chain, as Python builds it)."""
    try:
        try:
            raise inner
        except BaseException as exc:
            raise outer from exc
    except BaseException as exc:
        return exc


def _client_error(code: str, status: int):
    from botocore.exceptions import ClientError

    response = {
        "Error": {"Code": code, "Message": code},
        "ResponseMetadata": {"HTTPStatusCode": status},
    }
    return ClientError(response, "GetObject")  # type: ignore[arg-type]


def test_network_timeouts_throttling_and_lost_workers_are_transient():
    from botocore.exceptions import (
        ConnectTimeoutError,
        EndpointConnectionError,
        ReadTimeoutError,
    )
    from distributed.comm.core import CommClosedError
    from distributed.scheduler import KilledWorker

    transient = [
        # botocore's connection errors are not OSErrors (the old policy never retried them)
        EndpointConnectionError(endpoint_url="http://127.0.0.1:9000/b"),
        ConnectTimeoutError(endpoint_url="http://127.0.0.1:9000/b"),
        ReadTimeoutError(endpoint_url="http://127.0.0.1:9000/b"),
        ConnectionResetError(errno.ECONNRESET, "reset by peer"),
        TimeoutError("timed out"),
        TimeoutError(),
        OSError(errno.EHOSTUNREACH, "No route to host"),
        TransientIOError("the STAC API did not answer"),
        KilledWorker("task", "tcp://127.0.0.1:1", 3),
        CommClosedError("in <TCP>: Stream is closed"),
        _client_error("SlowDown", 503),
        _client_error("RequestLimitExceeded", 400),
        _client_error("InternalError", 500),
        OSError("RasterioIOError: HTTP response code: 503"),
    ]
    for exc in transient:
        assert is_transient(exc), repr(exc)
        assert failure_class(exc) == "transient"


def test_futures_cancelled_because_the_scheduler_went_away_are_transient():
    """A scheduler restarted or rescheduled (its pod moved), or the network to it, cancels
    every future of the client: the work itself did not fail, and the retry reconnects. A
    future cancelled by its owner is not retried."""
    from distributed.client import FutureCancelledError

    lost = FutureCancelledError(
        "cloud_mask-1f2e", "scheduler-connection-lost", "Client lost the connection"
    )
    assert is_transient(lost) and failure_class(lost) == "transient"
    assert is_transient(FutureCancelledError("k", "scheduler-restart"))
    assert is_transient(_caused(RuntimeError("fetching cloud_mask failed"), lost))
    assert not is_transient(FutureCancelledError("k", "unknown"))
    assert not is_transient(FutureCancelledError("k", None))


def test_aiohttp_connection_and_server_errors_are_transient():
    aiohttp = pytest.importorskip("aiohttp")
    assert is_transient(aiohttp.ServerDisconnectedError())
    assert is_transient(aiohttp.ClientConnectionError("connection lost"))
    info = aiohttp.RequestInfo(url="http://x/", method="GET", headers={}, real_url="http://x/")  # type: ignore[arg-type]
    assert is_transient(aiohttp.ClientResponseError(info, (), status=502))
    assert not is_transient(aiohttp.ClientResponseError(info, (), status=404))


def test_missing_paths_permissions_bad_input_and_corrupt_data_are_not():
    never = [
        FileNotFoundError(errno.ENOENT, "The specified bucket does not exist"),
        FileExistsError(errno.EEXIST, "blocked COG path"),
        PermissionError(errno.EACCES, "Access Denied"),
        IsADirectoryError(errno.EISDIR, "a directory"),
        NotADirectoryError(errno.ENOTDIR, "not a directory"),
        OSError("plain OSError: not a raster"),
        _client_error("NoSuchBucket", 404),
        _client_error("AccessDenied", 403),
        BadInputError("aoi", "x", "a polygon"),
        RuntimeError("Error reading Window(...) from '/a/red.tif': RasterioIOError('Read failed')"),
        ValueError("a bug"),
    ]
    for exc in never:
        assert not is_transient(exc), repr(exc)
    assert failure_class(BadInputError("f", 1, "2")) == "bad_input"
    assert failure_class(NoScenesError("none")) == "no_scenes"
    assert failure_class(ValueError("bug")) == "error"
    assert failure_class(IncompleteRunError("2 products failed")) == "error"


def test_the_cause_decides_when_the_outer_exception_does_not_say():
    from botocore.exceptions import EndpointConnectionError

    wrapped = _caused(
        RuntimeError("Error reading a window"), EndpointConnectionError(endpoint_url="u")
    )
    assert is_transient(wrapped)
    # context (raised while handling) counts too
    try:
        try:
            raise ConnectionResetError("reset")
        except ConnectionResetError:
            raise KeyError("while handling")  # noqa: B904
    except KeyError as exc:
        assert is_transient(exc)
    # an outer verdict wins: bad input raised from a network error is bad input
    assert not is_transient(_caused(BadInputError("f", 1, "2"), ConnectionResetError()))
    assert not is_transient(_caused(FileNotFoundError("gone"), TimeoutError()))


def test_s3fs_translations_keep_their_class():
    s3fs_errors = pytest.importorskip("s3fs.errors")
    missing = s3fs_errors.translate_boto_error(_client_error("NoSuchBucket", 404))
    assert isinstance(missing, FileNotFoundError) and not is_transient(missing)
    slow = s3fs_errors.translate_boto_error(_client_error("SlowDown", 503))
    assert type(slow) is OSError and is_transient(slow)  # an EBUSY OSError caused by SlowDown
    denied = s3fs_errors.translate_boto_error(_client_error("AccessDenied", 403))
    assert isinstance(denied, PermissionError) and not is_transient(denied)


def test_storage_reads_raise_transient_io_by_the_same_policy(monkeypatch):
    from botocore.exceptions import EndpointConnectionError

    from pipelines import storage

    class Dead:
        def __init__(self, exc: BaseException) -> None:
            self.exc = exc

        def open(self, path: str, mode: str = "rb"):
            raise self.exc

        def cat_file(self, path: str, **kwargs):
            raise self.exc

        def exists(self, path: str) -> bool:
            raise self.exc

    def dead(exc: BaseException):
        monkeypatch.setattr(storage, "filesystem", lambda url: (Dead(exc), url))

    dead(EndpointConnectionError(endpoint_url="http://127.0.0.1:9000"))
    with pytest.raises(TransientIOError, match=r"s3://b/plan\.json"):
        storage.read_bytes("s3://b/plan.json")
    with pytest.raises(TransientIOError):
        storage.exists("s3://b/plan.json")
    dead(FileNotFoundError(2, "The specified bucket does not exist"))
    with pytest.raises(FileNotFoundError):
        storage.read_bytes("s3://nobucket/plan.json")


def test_a_corrupt_data_block_is_bad_input_naming_the_file(tmp_path):
    import dask
    import numpy as np
    import rasterio
    from odc.geo.geobox import GeoBox

    from pipelines.load import classify_read_error, load_dem
    from pipelines.testing.stac import dem_item

    geobox = GeoBox.from_bbox((500000, 5000000, 500640, 5000640), crs="EPSG:32633", resolution=10)
    heights = np.random.default_rng(0).uniform(0, 500, geobox.shape).astype("float32")
    item = dem_item(tmp_path, "dem", geobox, heights)
    href = item["assets"]["data"]["href"]
    with rasterio.open(href) as src:  # the header stays intact: the file still opens
        offset = int(src.get_tag_item("BLOCK_OFFSET_0_0", "TIFF", bidx=1))
        size = int(src.get_tag_item("BLOCK_SIZE_0_0", "TIFF", bidx=1))
    path = Path(href)
    data = bytearray(path.read_bytes())
    data[offset + 2 : offset + size - 2] = b"\xff" * (size - 4)
    path.write_bytes(bytes(data))
    with rasterio.open(href) as src:
        assert src.width == 64

    lazy = load_dem([item], geobox, chunksize=64)
    with pytest.raises(Exception) as info, dask.config.set(scheduler="sync"):
        lazy.compute()
    classified = classify_read_error(info.value)
    assert isinstance(classified, BadInputError), repr(info.value)
    assert classified.value == href and "data block" in str(classified), str(classified)
    assert not is_transient(classified)


def test_errors_survive_pickling_with_their_fields():
    """They cross processes: a Dask worker's failure, the demo build's process pool."""
    import pickle
    import signal

    from pipelines.errors import MissingExtraError, RunCancelled

    bad = BadInputError("scene asset", "s3://b/k.tif", "a readable COG", "corrupt").of_scene("S2_X")
    bad.add_note("batch 3")
    for exc in (
        bad,
        MissingExtraError("ml"),
        RunCancelled(signal.SIGTERM, "run 2025-07"),
        TransientIOError("the STAC API did not answer"),
        NoScenesError("none"),
    ):
        copy = pickle.loads(pickle.dumps(exc))
        assert type(copy) is type(exc) and str(copy) == str(exc)
        assert copy.__dict__ == exc.__dict__
    assert pickle.loads(pickle.dumps(bad)).field == "scene asset"
    assert pickle.loads(pickle.dumps(bad)).__notes__ == ["batch 3"]
    assert pickle.loads(pickle.dumps(bad)).scene == "S2_X"
