"""What a deployment must hold before GPU runs: the ``gpu`` pool and the ``dask_default``
connection, and the check a run makes that the pool is there.

``python -m operators.provision tcp://SCHEDULER:8786`` (run where ``airflow`` reaches the
metadata DB) creates or updates both: the pool's slots are the scheduler's workers declaring the
``GPU`` resource (``--gpu-slots N`` to set them), the connection points at the scheduler. It is
what ``airflow pools set gpu N "..."`` and ``airflow connections add dask_default ...`` would
write; ``infra/local/deploy.sh`` provisions through it.

A task has no metadata DB access in Airflow 3 (the Execution API it talks to has no pool
route), so :func:`require_pool` reads the pool through the public REST API
(``GET /api/v2/pools/{name}``): at the URL of the Airflow connection ``airflow_api`` (host,
port, schema; login and password when the auth manager needs them) or of ``[api] base_url``.
Without either, the check is skipped with a warning (Airflow then lists the missing pool among
the DAG's warnings, and the GPU tasks wait in ``scheduled``).
"""

from __future__ import annotations

import argparse
import json
import logging
import urllib.error
import urllib.parse
import urllib.request
from dataclasses import dataclass
from typing import Any

from pipelines.errors import BadInputError

#: The pool of the GPU stage groups (see :class:`pipelines.stages.registry.StageGroup`).
GPU_POOL = "gpu"
#: The Airflow connection a task reads the REST API's address (and credentials) from.
API_CONN_ID = "airflow_api"
#: Seconds one REST API request may take.
API_TIMEOUT_S = 10.0

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class ApiAccess:
    """Where the Airflow REST API is and how to get a token (no login: an all-admins
    SimpleAuthManager, ``GET /auth/token``)."""

    base_url: str
    login: str | None = None
    password: str | None = None


def api_access() -> ApiAccess | None:
    """The REST API from the connection ``airflow_api``, else ``[api] base_url``; None when
    neither is configured."""
    try:
        from airflow.sdk import BaseHook

        conn = BaseHook.get_connection(API_CONN_ID)
    except Exception as exc:  # no such connection
        log.debug("no Airflow connection %s: %s", API_CONN_ID, exc)
    else:
        if conn.host:
            host = conn.host if "://" in conn.host else f"{conn.schema or 'http'}://{conn.host}"
            base = f"{host}:{conn.port}" if conn.port else host
            return ApiAccess(base.rstrip("/"), conn.login or None, conn.password or None)
    try:
        from airflow.configuration import conf

        base_url = conf.get("api", "base_url", fallback=None)
    except Exception as exc:  # no Airflow configuration
        log.debug("no [api] base_url: %s", exc)
        return None
    return ApiAccess(str(base_url).rstrip("/")) if base_url else None


def _request(url: str, method: str = "GET", body: object = None, token: str | None = None) -> Any:
    headers = {"Content-Type": "application/json"}
    if token:
        headers["Authorization"] = f"Bearer {token}"
    request = urllib.request.Request(
        url,
        method=method,
        data=None if body is None else json.dumps(body).encode(),
        headers=headers,
    )
    with urllib.request.urlopen(request, timeout=API_TIMEOUT_S) as resp:
        return json.load(resp)


def api_token(access: ApiAccess) -> str:
    """A JWT of the REST API (``/auth/token``: with the login when one is set)."""
    if access.login:
        body = {"username": access.login, "password": access.password or ""}
        return str(_request(f"{access.base_url}/auth/token", "POST", body)["access_token"])
    return str(_request(f"{access.base_url}/auth/token")["access_token"])


def pool_slots(name: str, access: ApiAccess) -> int | None:
    """Slots of the Airflow pool ``name`` read through the REST API; None when it does not
    exist. Network and authentication errors propagate."""
    token = api_token(access)
    try:
        pool = _request(f"{access.base_url}/api/v2/pools/{urllib.parse.quote(name)}", token=token)
    except urllib.error.HTTPError as exc:
        if exc.code == 404:
            return None
        raise
    return int(pool["slots"])


def require_pool(name: str = GPU_POOL, access: ApiAccess | None = None) -> int | None:
    """The slots of pool ``name``; a BadInputError (not retried) naming the pool to create when
    it is missing or has no slot. None, with a warning, when the REST API is not configured or
    does not answer (the check is then skipped)."""
    access = access or api_access()
    if access is None:
        log.warning(
            "pool %r not checked: no Airflow connection %r and no [api] base_url for the REST API",
            name,
            API_CONN_ID,
        )
        return None
    try:
        slots = pool_slots(name, access)
    except (OSError, ValueError, KeyError) as exc:  # unreachable, refused, not JSON
        log.warning("pool %r not checked: the REST API at %s: %s", name, access.base_url, exc)
        return None
    if slots is None or slots < 1:
        raise BadInputError(
            "Airflow pool",
            name if slots is None else f"{name} with {slots} slots",
            f"a pool {name!r} with one slot per GPU worker, for the run's GPU tasks",
            f'Create it: airflow pools set {name} N "terrapipe GPU stages" (N = the GPU workers),'
            " or python -m operators.provision tcp://SCHEDULER:8786",
        )
    return slots


def write_pool(name: str, slots: int, session: Any) -> None:
    """Create or update the Airflow pool ``name`` of a GPU stage group with ``slots`` slots
    (in the metadata DB ``session`` reaches)."""
    from airflow.models import Pool

    Pool.create_or_update_pool(
        name,
        slots=slots,
        description="terrapipe GPU stages (one slot per GPU worker)",
        include_deferred=False,
        session=session,
    )


def provision(address: str, gpu_slots: int | None = None, wait_s: float = 60.0) -> dict[str, Any]:
    """Create or update the ``gpu`` pool and the ``dask_default`` connection in the metadata DB
    (the process must reach it); the pool's slots are ``gpu_slots``, else the GPU workers of the
    scheduler at ``address`` (waiting up to ``wait_s`` s for one). Returns what was written."""
    from airflow.models import Connection
    from airflow.utils.session import create_session

    from operators.dask_cluster import AIRFLOW_CONN_ID, connect, require_gpu_workers
    from pipelines.config import DaskConfig

    parsed = urllib.parse.urlsplit(address)
    if not parsed.hostname or parsed.scheme not in ("tcp", "tls"):
        raise BadInputError("address", address, "a Dask scheduler address like tcp://host:8786")
    if gpu_slots is None:
        client = connect(address)
        try:
            config = DaskConfig(address=address)
            gpu_slots = len(require_gpu_workers(client, config, local=False, wait_s=wait_s))
        finally:
            client.close()
    if gpu_slots < 0:
        raise BadInputError("gpu_slots", gpu_slots, "a count of GPU workers >= 0")
    port = parsed.port or 8786
    with create_session() as session:
        write_pool(GPU_POOL, gpu_slots, session)
        old = session.query(Connection).filter(Connection.conn_id == AIRFLOW_CONN_ID).one_or_none()
        if old is not None:
            session.delete(old)
            session.flush()
        session.add(
            Connection(
                conn_id=AIRFLOW_CONN_ID, conn_type="generic", host=parsed.hostname, port=port
            )
        )
    return {"pool": GPU_POOL, "slots": gpu_slots, "connection": AIRFLOW_CONN_ID, "port": port}


def main(argv: list[str] | None = None) -> None:
    """``python -m operators.provision ADDRESS [--gpu-slots N]``: prints what was written."""
    parser = argparse.ArgumentParser(prog="python -m operators.provision", description=__doc__)
    parser.add_argument("address", help="the Dask scheduler, e.g. tcp://dask-scheduler:8786")
    parser.add_argument(
        "--gpu-slots",
        type=int,
        default=None,
        help="slots of the gpu pool (default: the scheduler's workers declaring GPU)",
    )
    args = parser.parse_args(argv)
    print(json.dumps(provision(args.address, args.gpu_slots)))


if __name__ == "__main__":
    main()
