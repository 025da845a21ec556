"""``terrapipe serve`` and ``terrapipe bench-tiles``."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer

ConfigArg = Annotated[
    Path | None,
    typer.Argument(help="Province config YAML (default: the embedded demo province)."),
]


def serve(
    config: ConfigArg = None,
    host: Annotated[str, typer.Option(help="Interface to listen on.")] = "127.0.0.1",
    port: Annotated[int, typer.Option(help="TCP port.", min=1, max=65535)] = 8765,
    store: Annotated[
        str | None, typer.Option(help="Override the output store (path or s3:// URL).")
    ] = None,
    max_tile_cogs: Annotated[
        int,
        typer.Option(
            help="The most COGs one map tile reads; a layer is drawn from the zoom where a "
            "tile spans at most this many (lower it for a store with slow requests).",
            min=4,
        ),
    ] = 64,  # render.MAX_TILE_COGS, not imported here: it loads the products package (2 s)
) -> None:
    """Serve the web page of a province: map of the products, runs, and field labels."""
    from pipelines.config import load_config
    from pipelines.errors import BadInputError

    try:
        import uvicorn
    except ImportError:
        raise BadInputError(
            "uvicorn", None, "the uvicorn package installed (pip install uvicorn)"
        ) from None
    from pipelines.web.app import create_app

    cfg = load_config(config, store=store)
    app = create_app(cfg, max_tile_cogs)
    typer.echo(
        f"terrapipe serve: {cfg.province} from {cfg.store} on http://{host}:{port}/", err=True
    )
    uvicorn.run(app, host=host, port=port, log_level="warning")


def bench_tiles(
    repeat: Annotated[int, typer.Option(help="Passes over the tiles.", min=1)] = 5,
    seed: Annotated[int, typer.Option(help="Seed of the synthetic COGs.")] = 0,
) -> None:
    """Map tile rendering speed of ``terrapipe serve`` (256 px tiles from 1024 px COGs), JSON."""
    from pipelines.web.bench import bench_tiles as run_bench

    print(json.dumps(run_bench(repeat=repeat, seed=seed), indent=1))
