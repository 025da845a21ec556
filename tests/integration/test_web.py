"""``terrapipe serve`` in a real headless browser (the system's Chromium, driven by Playwright).

A store is built once from the tiny demo archive (cloud_mask, haze_index, dehaze, water_mask,
flood_change through ``run_local``; parcels through the season engine's tile step), the app is
started as users start it (``terrapipe serve CONFIG --port P``) and the page is checked: it loads
the store, a product layer draws non-empty tiles, a click shows the STAC item, the run view
colours the tile grid and offers the report, and a label saved in the page lands in the labels
file, where the season's crop step reads it and fits on it.

``TERRAPIPE_WEB_SCREENSHOTS=DIR`` also saves the screenshots of the docs (map, runs, labels).
"""

from __future__ import annotations

import json
import os
import re
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest
import yaml

from pipelines.config import parse_config
from tests.fixtures.processes import stop_process

pytestmark = pytest.mark.integration

CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
PRODUCTS = ["cloud_mask", "haze_index", "dehaze", "water_mask", "flood_change"]
CALENDAR = str(Path(__file__).parents[2] / "pipelines" / "data" / "demo_crops.yaml")
#: Generous waits (ms): the machine running the tests may be loaded.
WAIT_MS = 90_000
SHOTS = os.environ.get("TERRAPIPE_WEB_SCREENSHOTS")


def _raw(archive: Path, store: str, labels: Path, **changes) -> dict:
    info = json.loads((archive / "archive.json").read_text())
    raw = {
        "province": "tiny",
        "aoi": json.loads((archive / "province.geojson").read_text()),
        "crs": info["crs"],
        "tile_px": 128,
        "start": "2025-07-15",
        "end": "2025-07-25",
        "products": PRODUCTS,
        "stac": {"archive": str(archive), "max_cloud_cover": 100},
        "store": store,
        "crop_calendar": CALENDAR,
        "agri": {"labels": str(labels), "counties": str(archive / "counties.geojson")},
        "dask": {"n_workers": 1, "gpu_workers": 0, "memory_limit": "3GiB"},
    }
    raw.update(changes)
    return raw


@pytest.fixture(scope="module")
def site(tiny_archive, tmp_path_factory) -> dict:
    """The store, the config file and the season plan."""
    from distributed import Client, LocalCluster

    from pipelines import products
    from pipelines.engine.plan import make_plan, stac_api_for
    from pipelines.engine.run import prepare_products, run_local
    from pipelines.engine.season import season_tile

    root = tmp_path_factory.mktemp("web")
    store = str(root / "store")
    labels = root / "labels.geojson"
    raw = _raw(tiny_archive, store, labels)
    season = parse_config(
        {**raw, "start": "2025-03-01", "end": "2025-11-30", "products": ["parcels"]}
    )
    with (
        LocalCluster(
            n_workers=1, threads_per_worker=2, processes=False, dashboard_address=None
        ) as cluster,
        Client(cluster) as client,
    ):
        summary = run_local(parse_config(raw), client)
        with stac_api_for(season.stac) as api:
            plan = make_plan(season, api)
        prepare_products(plan, store)
        for tile_id in plan.tile_ids:
            season_tile(plan, store, tile_id, client)
    products.build_catalog(store, "tiny")
    config_path = root / "tiny.yaml"
    config_path.write_text(yaml.safe_dump(raw))
    return {
        "store": store,
        "labels": labels,
        "config": config_path,
        "season": season,
        "plan": plan,
        "summary": summary,
    }


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@contextmanager
def _served(config: Path, *options: str) -> Iterator[str]:
    """``terrapipe serve CONFIG --port P OPTIONS`` as users start it; its URL once it answers."""
    port = _free_port()
    exe = Path(sys.executable).parent / "terrapipe"
    proc = subprocess.Popen(
        [str(exe), "serve", str(config), "--port", str(port), *options],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + WAIT_MS / 1000
    try:
        while True:
            if proc.poll() is not None:
                pytest.fail(f"terrapipe serve exited {proc.returncode}: {proc.stdout.read()}")
            try:
                with urllib.request.urlopen(f"{url}/api/config", timeout=5) as r:
                    if r.status == 200:
                        break
            except OSError:
                pass
            if time.monotonic() > deadline:
                pytest.fail("terrapipe serve did not answer on /api/config")
            time.sleep(0.5)
        yield url
    finally:
        stop_process(proc)


def _load(browser: Any, url: str) -> Any:
    """A new page of ``browser`` at ``url``, loaded; its uncaught errors in ``.errors``."""
    context = browser.new_context(viewport={"width": 1280, "height": 800}, accept_downloads=True)
    pg = context.new_page()
    pg.set_default_timeout(WAIT_MS)
    errors: list[str] = []
    pg.on("pageerror", lambda e: errors.append(str(e)))
    pg.goto(url)
    pg.wait_for_selector("body[data-ready='1']")
    pg.wait_for_load_state("networkidle")
    pg.errors = errors  # type: ignore[attr-defined]
    return pg


@pytest.fixture(scope="module")
def server(site):
    with _served(site["config"]) as url:
        yield url


@pytest.fixture(scope="module")
def page(server):
    if not Path(CHROMIUM).exists():
        pytest.skip(
            f"no system Chromium at {CHROMIUM}: install Debian's chromium package "
            "(bash infra/dev.sh setup, or apt-get install chromium)"
        )
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        yield _load(browser, server)
        browser.close()


def _shot(page, name: str) -> None:
    if SHOTS:
        Path(SHOTS).mkdir(parents=True, exist_ok=True)
        page.screenshot(path=str(Path(SHOTS) / name))


def _drawn_pixels(page, product: str) -> list[int]:
    """Non-transparent pixels of each loaded tile image of a product layer (drawn to a canvas)."""
    return page.evaluate(
        """(cls) => Array.from(document.querySelectorAll(`.${cls} img.leaflet-tile-loaded`))
          .map((img) => {
            const c = document.createElement("canvas");
            c.width = img.naturalWidth; c.height = img.naturalHeight;
            const ctx = c.getContext("2d");
            ctx.drawImage(img, 0, 0);
            const d = ctx.getImageData(0, 0, c.width, c.height).data;
            let n = 0;
            for (let i = 3; i < d.length; i += 4) if (d[i] > 0) n++;
            return n;
          })""",
        f"product-{product}",
    )


def _screen_point(page, lon: float, lat: float) -> tuple[float, float]:
    """Page coordinates of a WGS84 point on the map."""
    box = page.locator("#map").bounding_box()
    pt = page.evaluate("([lat, lon]) => map.latLngToContainerPoint([lat, lon])", [lat, lon])
    return box["x"] + pt["x"], box["y"] + pt["y"]


def test_the_page_loads_the_store_and_a_product_draws_non_empty_tiles(page, site):
    names = page.locator("#products input").evaluate_all("(els) => els.map((e) => e.value)")
    assert sorted(names) == sorted([*PRODUCTS, "parcels"])
    assert page.locator("#message").is_hidden(), page.locator("#message").text_content()
    page.check("#product-dehaze")
    page.wait_for_selector(".product-dehaze img.leaflet-tile-loaded")
    page.wait_for_load_state("networkidle")
    drawn = _drawn_pixels(page, "dehaze")
    assert drawn and max(drawn) > 1000, drawn
    assert page.locator("#date-label").text_content() == "2025-07-20"
    page.check("#product-cloud_mask")
    page.wait_for_selector(".product-cloud_mask img.leaflet-tile-loaded")
    page.wait_for_load_state("networkidle")
    assert max(_drawn_pixels(page, "cloud_mask")) > 1000
    assert page.locator("#legend .legend-item").count() == 5  # clear, cloud, shadow, cirrus, snow
    assert not page.errors  # type: ignore[attr-defined]


def test_a_click_shows_the_pixel_values_and_the_stac_item(page, site):
    aoi = site["season"].aoi_geometry().centroid
    page.check("#product-cloud_mask")
    x, y = _screen_point(page, aoi.x, aoi.y)
    page.mouse.click(x, y)
    page.wait_for_selector("#stac-item")
    text = page.locator("#stac-item").text_content()
    from pipelines.stages.registry import get_stage

    assert "tiny_cloud_mask_" in text and f"cloud_mask {get_stage('cloud_mask').version}" in text
    values = page.locator("#pixel-values").text_content()
    assert "cloud_mask" in values
    _shot(page, "web-map.png")


def test_the_run_view_colours_the_tile_grid_and_offers_the_report(page, site):
    page.click("#tab-runs")
    page.wait_for_selector("#runs-table tbody tr")
    page.wait_for_selector("#report-download")
    page.wait_for_load_state("networkidle")
    rows = page.locator("#runs-table tbody tr").count()
    assert rows >= 1
    tiles = page.locator("path.leaflet-interactive")
    assert tiles.count() == site["summary"]["tiles"]
    fills = set(tiles.evaluate_all("(els) => els.map((e) => e.getAttribute('fill'))"))
    assert fills == {"#2e7d32"}  # every tile done
    tiles.first.click(force=True)
    page.wait_for_selector("#tile-detail h2")
    assert "done" in page.locator("#tile-detail").text_content()
    with page.expect_download() as info:
        page.click("#report-download")
    report = json.loads(Path(info.value.path()).read_text())
    assert report["state"] == "done" and len(report["tiles"]) == site["summary"]["tiles"]
    _shot(page, "web-runs.png")


def test_the_run_view_lists_the_scenes_at_fault_and_the_line_that_leaves_them_out(page, site):
    """The server's own report of the run, with a failure on a scene's file added as the report
    gives it (``failed_scenes``; computed and served as in the unit tests of the report and the
    app): the page lists each scene with its tiles and the config line, as ``terrapipe status``
    prints them. A run with no scene at fault shows no such list."""
    page.click("#tab-runs")
    page.wait_for_selector("#report-download")
    assert page.locator("#run-scenes").count() == 0
    tile_ids = list(site["plan"].tile_ids)[:2]
    scenes = {"S2A_TINY_20250705_0_L2A": tile_ids, "S2B_TINY_20250712_0_L2A": tile_ids[:1]}

    def with_failures(route):
        response = route.fetch()
        body = response.json()
        body["report"]["failed_scenes"] = scenes
        route.fulfill(response=response, json=body)

    pattern = re.compile(r".*/api/runs/[^/]+$")
    page.route(pattern, with_failures)
    try:
        page.locator("#runs-table tbody tr").first.click()
        page.wait_for_selector("#run-scenes")
        rows = page.locator("#run-scenes tbody tr")
        assert rows.count() == 2
        assert rows.first.text_content().startswith("S2A_TINY_20250705_0_L2A2")
        assert all(t in rows.first.text_content() for t in tile_ids)
        assert page.locator("#run-exclude").text_content() == (
            "stac: {exclude_items: [S2A_TINY_20250705_0_L2A, S2B_TINY_20250712_0_L2A]}"
        )
        _shot(page, "web-run-scenes.png")
    finally:
        # The page refreshes the run on a timer, so a handler may be mid-flight here: wait for
        # it rather than let the route fall through to the network under it.
        page.unroute_all(behavior="wait")
    page.locator("#runs-table tbody tr").first.click()
    page.wait_for_function("() => !document.querySelector('#run-scenes')")


#: Wraps the page's fetch: each read of a run (``/api/runs/<id>``) answers 25 s later (on the
#: page's clock), as a province's run does on a slow store; the reads in flight are counted.
SLOW_RUN_READS = """
window.runReads = {inFlight: 0, mostAtOnce: 0, done: 0};
const realFetch = window.fetch;
window.fetch = async (...args) => {
  if (!/\\/api\\/runs\\/[^/]+$/.test(String(args[0]))) return realFetch(...args);
  const reads = window.runReads;
  reads.inFlight += 1;
  reads.mostAtOnce = Math.max(reads.mostAtOnce, reads.inFlight);
  try {
    const response = await realFetch(...args);
    await new Promise((done) => setTimeout(done, 25000));
    return response;
  } finally {
    reads.inFlight -= 1;
    reads.done += 1;
  }
};
"""


def test_the_run_view_reads_a_run_again_one_read_at_a_time(page, server):
    """A run is read again while its view is open (every 10 s), but never while the last read
    is still answering: where a read takes longer than that (every marker of a province's run
    on an object store), reads would pile up. The page's clock is moved on 10 s at a time."""
    context = page.context.browser.new_context()
    try:
        slow = context.new_page()
        slow.set_default_timeout(WAIT_MS)
        slow.clock.install()
        slow.add_init_script(SLOW_RUN_READS)
        slow.goto(server)
        slow.wait_for_selector("body[data-ready='1']")
        slow.click("#tab-runs")
        for _ in range(40):
            slow.wait_for_timeout(250)  # the server answers meanwhile
            slow.clock.fast_forward(10_000)
            if slow.evaluate("() => window.runReads.done") >= 4:
                break
        reads = slow.evaluate("() => window.runReads")
        assert reads["done"] >= 4 and reads["mostAtOnce"] == 1, reads
        assert slow.locator("#report-download").count() == 1
    finally:
        context.close()


def test_a_label_saved_in_the_page_is_written_and_read_by_the_season_crop_step(page, site, server):
    from pipelines.agri.labels import MIN_PER_CROP, read_labels
    from pipelines.demo.labels import sample_demo_labels
    from pipelines.engine.season_crops import fit_crops

    season = site["season"]
    survey = sample_demo_labels(str(season.stac.archive), per_crop=MIN_PER_CROP, seed=0)
    # The page saves the one label the survey file lacks: one on a field the parcels product
    # found (the parcel lookup answers 200 there).
    chosen = None
    for i, feature in enumerate(survey["features"]):
        lon, lat = feature["geometry"]["coordinates"]
        try:
            with urllib.request.urlopen(
                f"{server}/api/parcel/2025-03-01?lon={lon}&lat={lat}", timeout=30
            ) as r:
                if r.status == 200:
                    chosen = i
                    break
        except OSError:
            continue
    assert chosen is not None, "no survey point on a detected parcel"
    target = survey["features"][chosen]
    others = [f for i, f in enumerate(survey["features"]) if i != chosen]
    labels = site["labels"]
    labels.write_text(json.dumps({"type": "FeatureCollection", "features": others}))

    page.click("#tab-labels")
    page.wait_for_selector("#counts tr")
    page.wait_for_load_state("networkidle")
    crop = target["properties"]["crop"]
    count = page.locator(f"#counts tr[data-crop='{crop}'] .count")
    assert count.text_content() == str(MIN_PER_CROP - 1)
    page.select_option("#crop", crop)
    page.check("#mode-parcel")
    west, south, east, north = season.aoi_geometry().bounds
    page.evaluate("(b) => map.fitBounds(b)", [[south, west], [north, east]])
    page.wait_for_load_state("networkidle")
    x, y = _screen_point(page, *target["geometry"]["coordinates"])
    page.mouse.click(x, y)
    page.wait_for_selector("#save-label:enabled")
    assert page.locator("#candidate").text_content().startswith("Parcel ")
    page.click("#save-label")
    page.wait_for_selector("#message.ok")
    assert count.text_content() == str(MIN_PER_CROP)
    assert "Every crop has enough labels" in page.locator("#ready").text_content()
    _shot(page, "web-labels.png")

    saved = json.loads(labels.read_text())["features"]
    assert len(saved) == len(survey["features"])
    assert saved[-1]["properties"]["crop"] == crop
    assert saved[-1]["geometry"]["type"] == "Polygon"
    # The season's crop step reads the file with its reader and fits the crop model on it.
    read = read_labels(str(labels), season.aoi_geometry(), season.crs, season.crop_calendar.names)
    assert len(read) == len(survey["features"])
    fitted = fit_crops(
        site["plan"], site["store"], str(labels), season.crop_calendar, season.aoi_geometry()
    )
    assert fitted["refit"] and fitted["labels"] >= len(season.crop_calendar.names)

    # A label outside the AOI is refused on the page and the file is left as it was.
    before = labels.read_bytes()
    page.check("#mode-draw")
    page.evaluate("(b) => map.fitBounds(b)", [[south - 0.01, west - 0.02], [north, east]])
    page.wait_for_load_state("networkidle")
    for lon, lat in ((west - 0.015, south), (west - 0.012, south), (west - 0.012, south + 0.003)):
        page.mouse.click(*_screen_point(page, lon, lat))
    page.click("#finish-polygon")
    page.click("#save-label")
    page.wait_for_selector("#message:not(.ok):not([hidden])")
    assert "inside the AOI" in page.locator("#message").text_content()
    assert labels.read_bytes() == before
    assert not page.errors  # type: ignore[attr-defined]


def test_a_yield_forecast_draws_as_a_county_choropleth(page, site, tiny_archive):
    import pandas as pd

    from pipelines.products import season_file_url, season_item_url, write_table

    store = site["store"]
    counties = json.loads((tiny_archive / "counties.geojson").read_text())["features"]
    ids = [int(f["properties"]["county_id"]) for f in counties]
    # A SYNTHETIC forecast table (the yield model needs two past season runs): 4-8 t/ha.
    forecast = pd.DataFrame(
        {
            "season": 2025,
            "county_id": ids,
            "crop": "wheat",
            "forecast": [4.0 + 4.0 * i / max(len(ids) - 1, 1) for i in range(len(ids))],
        }
    )
    write_table(forecast, season_file_url(store, "tiny", "yield", 2025, "forecast.parquet"))
    item = Path(season_item_url(store, "tiny", "yield", 2025))
    item.parent.mkdir(parents=True, exist_ok=True)
    item.write_text(json.dumps({"id": "tiny_yield_2025", "properties": {"terrapipe:model": {}}}))
    page.reload()
    page.wait_for_selector("body[data-ready='1']")
    page.check("#product-yield")
    page.wait_for_selector("#yield-crop")
    fills = page.locator("path.leaflet-interactive").evaluate_all(
        "(els) => els.map((e) => e.getAttribute('fill'))"
    )
    assert len(fills) == len(ids) and len(set(fills)) == min(len(ids), 5)
    page.locator("path.leaflet-interactive").first.click(force=True)
    page.wait_for_selector("#county-forecast")
    assert "wheat" in page.locator("#county-forecast").text_content()
    assert not page.errors  # type: ignore[attr-defined]


def _zoom_to(pg: Any, zoom: int) -> None:
    """Zoom the page's map to ``zoom`` (no animation) and wait until it is there."""
    pg.evaluate("(z) => map.setZoom(z, { animate: false })", zoom)
    deadline = time.monotonic() + WAIT_MS / 1000
    while (now := pg.evaluate("map.getZoom()")) != zoom:
        assert time.monotonic() < deadline, f"the map stayed at zoom {now}, not {zoom}"
        time.sleep(0.2)


def test_a_layer_zoomed_out_beyond_its_min_zoom_says_how_far_to_zoom_in(page, site):
    # Six tiles of the tiny province; at most four COGs a map tile: the layer is drawn only
    # from the zoom where a tile spans no more than four of them.
    with _served(site["config"], "--max-tile-cogs", "4") as url:
        pg = _load(page.context.browser, url)
        pg.check("#product-cloud_mask")
        min_zoom = pg.evaluate("ui.product.min_zoom")
        assert min_zoom > 0 and pg.evaluate("ui.product.max_tile_cogs") == 4
        _zoom_to(pg, min_zoom - 1)
        hint = pg.locator("#zoom-hint")
        assert hint.is_visible()
        assert f"Zoom in to level {min_zoom} or closer to see cloud_mask" in hint.text_content()
        pg.wait_for_load_state("networkidle")
        assert pg.locator(".product-cloud_mask img.leaflet-tile-loaded").count() == 0
        _zoom_to(pg, min_zoom)
        pg.wait_for_selector(".product-cloud_mask img.leaflet-tile-loaded")
        pg.wait_for_load_state("networkidle")
        assert hint.is_hidden()
        deadline = time.monotonic() + WAIT_MS / 1000
        while max(_drawn_pixels(pg, "cloud_mask"), default=0) <= 100:  # tiles land one by one
            assert time.monotonic() < deadline, "no cloud_mask pixels drawn at min_zoom"
            time.sleep(0.2)
        assert not pg.errors  # type: ignore[attr-defined]
