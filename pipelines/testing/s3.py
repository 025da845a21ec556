"""A loopback S3 server for tests: ``moto_server`` in its own process (moto inside the test process
deadlocks when GDAL writes through it), on a free port, with one bucket, reached through the
ordinary environment variables (``AWS_ENDPOINT_URL`` and credentials) that pipelines.storage and
GDAL read.
"""

from __future__ import annotations

import os
import socket
import subprocess
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

from pipelines.errors import TransientIOError

#: Environment a client needs to reach the server (values filled in by :func:`start_s3_server`).
ENV_NAMES = ("AWS_ENDPOINT_URL", "AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_REGION")


@dataclass
class S3Server:
    """A running moto S3 server."""

    endpoint_url: str
    """e.g. ``http://127.0.0.1:39123``."""
    bucket: str
    """The bucket created at start."""
    process: subprocess.Popen = field(repr=False)
    log: Path = field(repr=False)

    @property
    def pid(self) -> int:
        return self.process.pid

    @property
    def env(self) -> dict[str, str]:
        """Environment variables that point clients (s3fs, boto3, GDAL) at this server."""
        return {
            "AWS_ENDPOINT_URL": self.endpoint_url,
            "AWS_ACCESS_KEY_ID": "testing",
            "AWS_SECRET_ACCESS_KEY": "testing",
            "AWS_REGION": "us-east-1",
        }

    def url(self, *parts: str) -> str:
        """``s3://<bucket>/<parts...>``."""
        return "/".join([f"s3://{self.bucket}", *[p.strip("/") for p in parts if p]])


def _moto_executable() -> str:
    from pipelines.catalog.server import venv_executable

    return venv_executable("moto_server", "pip install 'moto[server]'")


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _answers(url: str) -> bool:
    try:
        with urllib.request.urlopen(url + "/moto-api/", timeout=1.0):
            return True
    except urllib.error.HTTPError:
        return True  # it answered, even if with an error status
    except (urllib.error.URLError, OSError):
        return False


def start_s3_server(
    bucket: str = "terrapipe-test", *, timeout: float = 30.0, port: int | None = None
) -> S3Server:
    """Start ``moto_server`` on 127.0.0.1 (``port``, default a free one), wait for it and create
    ``bucket``. A server restarted on the port of one that was stopped has none of its objects
    (moto keeps them in memory).

    Does not change the environment: use :func:`s3_environment` or ``server.env``.
    """
    log = Path(tempfile.mkstemp(prefix="moto-", suffix=".log")[1])
    for _ in range(3):
        chosen = port or _free_port()  # a free port per attempt (one taken meanwhile)
        url = f"http://127.0.0.1:{chosen}"
        with open(log, "wb") as out:
            proc = subprocess.Popen(
                [_moto_executable(), "-H", "127.0.0.1", "-p", str(chosen)],
                stdout=out,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                start_new_session=True,
            )
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline and proc.poll() is None:
            if _answers(url):
                server = S3Server(url, bucket, proc, log)
                _create_bucket(server)
                return server
            time.sleep(0.1)
        if proc.poll() is None:
            _stop(proc)
            raise TransientIOError(f"moto_server at {url} did not answer in {timeout:.0f} s")
    raise TransientIOError(f"moto_server did not start: {log.read_text(errors='replace')[-2000:]}")


def _create_bucket(server: S3Server) -> None:
    import boto3

    client = boto3.client(
        "s3",
        endpoint_url=server.endpoint_url,
        aws_access_key_id="testing",
        aws_secret_access_key="testing",
        region_name="us-east-1",
    )
    client.create_bucket(Bucket=server.bucket)


def _stop(proc: subprocess.Popen, timeout: float = 10.0) -> None:
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout)


def stop_s3_server(server: S3Server) -> None:
    """Stop the server process (by its own handle) and remove its log."""
    _stop(server.process)
    server.log.unlink(missing_ok=True)


@contextmanager
def s3_environment(server: S3Server) -> Iterator[None]:
    """Set the AWS_* variables of ``server`` in ``os.environ``; restore the old values on exit."""
    old = {k: os.environ.get(k) for k in ENV_NAMES}
    os.environ.update(server.env)
    try:
        yield
    finally:
        for k, v in old.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


@contextmanager
def s3_server(bucket: str = "terrapipe-test") -> Iterator[S3Server]:
    """Context manager: a running server with its environment set; stopped on exit."""
    server = start_s3_server(bucket)
    try:
        with s3_environment(server):
            yield server
    finally:
        stop_s3_server(server)
