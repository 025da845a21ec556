"""``terrapipe stac ...``: serve an archive as a local STAC API, stop it, search any STAC API."""

from __future__ import annotations

import json
import signal
import threading
from pathlib import Path
from typing import Annotated

import typer

app = typer.Typer(name="stac", help="Local STAC API server and STAC search.", no_args_is_help=True)


@app.command()
def serve(
    archive_url: Annotated[str, typer.Argument(help="Archive root (local path or s3:// URL).")],
    port: Annotated[int | None, typer.Option(help="TCP port (default: a free one).")] = None,
    host: Annotated[str, typer.Option(help="Address to bind.")] = "127.0.0.1",
    detach: Annotated[bool, typer.Option(help="Start in the background and return.")] = False,
    pid_file: Annotated[Path | None, typer.Option(help="Where to record the server.")] = None,
) -> None:
    """Serve ARCHIVE_URL's STAC items on loopback (rustac, in-memory)."""
    from pipelines.catalog.server import start_server, stop_server

    server = start_server(archive_url, port=port, host=host, pid_file=pid_file)
    print(json.dumps({"url": server.url, "pid": server.pid, "pid_file": str(server.pid_file)}))
    if detach:
        return
    done = threading.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: done.set())
    try:
        while not done.wait(1.0):
            if not Path(server.pid_file).exists():  # stopped from elsewhere
                break
    finally:
        stop_server(server)


@app.command()
def stop(
    archive_url: Annotated[
        str | None, typer.Argument(help="Archive whose server to stop (finds its PID file).")
    ] = None,
    pid_file: Annotated[Path | None, typer.Option(help="PID file of the server.")] = None,
) -> None:
    """Stop a server started with `terrapipe stac serve --detach`."""
    from pipelines.catalog.server import PID_FILE_NAME, default_run_dir, stop_server
    from pipelines.errors import BadInputError

    if pid_file is None:
        if archive_url is None:
            raise BadInputError("pid_file", None, "--pid-file PATH or the ARCHIVE_URL served")
        pid_file = default_run_dir(archive_url) / PID_FILE_NAME
    stopped = stop_server(pid_file)
    print("stopped" if stopped else f"no server running ({pid_file})")


@app.command()
def search(
    api_url: Annotated[str, typer.Argument(help="STAC API root URL.")],
    collections: Annotated[
        list[str], typer.Option("--collection", "-c", help="s2, s1, dem or an id.")
    ],
    bbox: Annotated[str | None, typer.Option(help="west,south,east,north (degrees).")] = None,
    datetime: Annotated[str | None, typer.Option(help="START/END (ISO 8601, '..' open).")] = None,
    max_cloud_cover: Annotated[float | None, typer.Option(help="Percent.")] = None,
    allow_empty: Annotated[bool, typer.Option(help="Exit 0 when nothing matches.")] = False,
) -> None:
    """Search a STAC API and print one line per item (collection, id, datetime, cloud cover)."""
    from pipelines.catalog.search import search as run_search
    from pipelines.catalog.search import search_or_raise
    from pipelines.errors import BadInputError

    box = None
    if bbox is not None:
        try:
            box = [float(v) for v in bbox.split(",")]
        except ValueError as exc:
            raise BadInputError("bbox", bbox, "four numbers west,south,east,north") from exc
        if len(box) != 4:
            raise BadInputError("bbox", bbox, "four numbers west,south,east,north")
    fn = run_search if allow_empty else search_or_raise
    items = fn(api_url, collections, bbox=box, datetime=datetime, max_cloud_cover=max_cloud_cover)
    for item in items:
        p = item.properties
        print(
            f"{item.collection_id}\t{item.id}\t{p.get('datetime')}\t{p.get('eo:cloud_cover', '')}"
        )
