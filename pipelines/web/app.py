"""The FastAPI application of ``terrapipe serve``: the page, map tiles, runs and labels.

Routes (JSON unless said otherwise; every refusal is ``{"error": message, "field": ...}`` with
status 400, or 404 for a file the catalog names but the store lacks):

- ``GET /``: the page (``static/index.html``); ``/static/...`` its scripts and vendored Leaflet.
- ``GET /api/config``: province, store, AOI (GeoJSON), crops of the calendar, label file.
- ``GET /api/products``: the products in the catalog with their labels, bounds and legend.
- ``GET /tiles/{product}/{label}/{z}/{x}/{y}.png``: a 256 px web mercator tile (transparent where
  no COG of the label lies).
- ``GET /api/legend/{product}/{label}``: the colour scale of a truecolor or continuous layer.
- ``GET /api/point/{product}/{label}?lon=&lat=``: pixel values and the tile's STAC item.
- ``GET /api/parcel/{label}?lon=&lat=``: the parcel under a point (GeoJSON Feature).
- ``GET /api/yield/{season}``: the county yield forecast joined to the county polygons.
- ``GET /api/runs``, ``GET /api/runs/{run_id}`` (report and tile outlines, shared by the
  viewers of a run: :mod:`pipelines.web.runs`),
  ``GET /api/runs/{run_id}/report.json`` (the report as a download).
- ``GET /api/labels``, ``POST /api/labels`` (``{crop, geometry, properties?}``),
  ``POST /api/labels/undo``.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from fastapi import FastAPI, Request
from fastapi.responses import FileResponse, JSONResponse, Response
from fastapi.staticfiles import StaticFiles

from pipelines.config import ProvinceConfig
from pipelines.errors import BadInputError
from pipelines.web.labels import LabelBook
from pipelines.web.render import (
    MAX_TILE_COGS,
    MissingProductFile,
    TileRenderer,
    check_lonlat,
    empty_tile,
)
from pipelines.web.runs import RunViews, run_view
from pipelines.web.store import StoreIndex
from pipelines.web.yields import yield_map, yield_seasons

STATIC = Path(__file__).parent / "static"


def create_app(config: ProvinceConfig, max_tile_cogs: int = MAX_TILE_COGS) -> FastAPI:
    """The web application over ``config``'s store, province and label file; a map tile reads
    at most ``max_tile_cogs`` COGs (:class:`~pipelines.web.render.TileRenderer`)."""
    app = FastAPI(title=f"terrapipe {config.province}", docs_url=None, redoc_url=None)
    index = StoreIndex(config.store, config.province)
    renderer = TileRenderer(index, max_tile_cogs)
    book = LabelBook(config)
    run_views = RunViews(
        lambda run_id, settled: run_view(config.store, config.province, run_id, settled)
    )

    @app.exception_handler(BadInputError)
    async def bad_input(request: Request, exc: BadInputError) -> JSONResponse:
        return JSONResponse({"error": str(exc), "field": exc.field}, status_code=400)

    @app.exception_handler(MissingProductFile)
    async def missing_file(request: Request, exc: MissingProductFile) -> JSONResponse:
        return JSONResponse({"error": str(exc), "field": "cog", "url": exc.url}, status_code=404)

    @app.get("/", include_in_schema=False)
    def page() -> FileResponse:
        return FileResponse(STATIC / "index.html", media_type="text/html")

    app.mount("/static", StaticFiles(directory=STATIC), name="static")

    @app.get("/api/config")
    def api_config() -> dict[str, Any]:
        west, south, east, north = config.aoi_geometry().bounds
        calendar = config.crop_calendar
        return {
            "province": config.province,
            "store": config.store,
            "aoi": config.aoi,
            "bounds": [west, south, east, north],
            "crops": [str(c) for c in calendar.names] if calendar is not None else [],
            "labels": config.agri.labels,
        }

    @app.get("/api/products")
    def api_products() -> dict[str, Any]:
        found = index.products()
        west, south, east, north = config.aoi_geometry().bounds
        out = []
        for name, product in sorted(found.items()):
            entry: dict[str, Any] = {
                "name": name,
                "labels": product.labels,
                "bounds": list(product.bbox),
            }
            try:
                style = renderer.style(name)
            except MissingProductFile as exc:
                entry.update(kind=None, bands=[], legend=[], error=str(exc))
            else:
                entry.update(
                    kind=style.kind,
                    bands=list(style.bands),
                    legend=style.legend(),
                    min_zoom=renderer.min_zoom(name),
                    max_tile_cogs=renderer.max_tile_cogs,
                )
            out.append(entry)
        seasons = yield_seasons(config.store, config.province)
        if seasons:
            out.append(
                {
                    "name": "yield",
                    "labels": [str(s) for s in seasons],
                    "bounds": [west, south, east, north],
                    "kind": "choropleth",
                    "bands": ["forecast"],
                    "legend": [],
                }
            )
        message = None
        if not out:
            message = (
                f"The store {config.store} holds no products of {config.province} yet (no "
                f"{index.catalog_url}): run `terrapipe run` with this config first."
            )
        return {"products": out, "message": message}

    @app.get("/tiles/{product}/{label}/{z}/{x}/{y}.png")
    def tile(product: str, label: str, z: int, x: int, y: int) -> Response:
        png = renderer.tile(product, label, z, x, y) or empty_tile()
        return Response(png, media_type="image/png", headers={"Cache-Control": "max-age=60"})

    @app.get("/api/legend/{product}/{label}")
    def legend(product: str, label: str) -> dict[str, Any]:
        return renderer.scale(product, label)

    @app.get("/api/point/{product}/{label}")
    def point(product: str, label: str, lon: float, lat: float) -> dict[str, Any]:
        return renderer.point(product, label, lon, lat)

    @app.get("/api/parcel/{label}")
    def parcel(label: str, lon: float, lat: float) -> dict[str, Any]:
        check_lonlat(lon, lat)
        return renderer.parcel(label, lon, lat)

    @app.get("/api/yield/{season}")
    def yield_layer(season: int) -> dict[str, Any]:
        return yield_map(config.store, config.province, season, config.agri.counties)

    @app.get("/api/runs")
    def runs() -> dict[str, Any]:
        from pipelines.engine.report import run_summaries

        summaries = run_summaries(config.store, config.province)
        return {"runs": [r.to_json() for r in reversed(summaries)]}

    @app.get("/api/runs/{run_id}")
    def run(run_id: str) -> dict[str, Any]:
        return run_views.get(run_id)

    @app.get("/api/runs/{run_id}/report.json")
    def run_json(run_id: str) -> Response:
        from pipelines.engine.report import plan_url_of, run_report

        report = run_report(plan_url_of(config.store, config.province, run_id), config.store)
        return Response(
            json.dumps(report.to_json(), indent=1),
            media_type="application/json",
            headers={"Content-Disposition": f'attachment; filename="{run_id}-report.json"'},
        )

    @app.get("/api/labels")
    def labels() -> dict[str, Any]:
        return book.state().to_json()

    @app.post("/api/labels")
    async def add_label(request: Request) -> dict[str, Any]:
        try:
            body = await request.json()
        except ValueError:
            raise BadInputError("body", "<not JSON>", "a JSON object {crop, geometry}") from None
        if not isinstance(body, dict):
            raise BadInputError("body", type(body).__name__, "a JSON object {crop, geometry}")
        props = body.get("properties")
        return book.add(
            body.get("crop"), body.get("geometry"), props if isinstance(props, dict) else None
        ).to_json()

    @app.post("/api/labels/undo")
    def undo_label() -> dict[str, Any]:
        return book.undo().to_json()

    return app
