"""The demo province archive: determinism, layout, STAC shape, realism of the synthetic signals."""

from __future__ import annotations

import csv
import datetime as dt
import errno
import hashlib
import json
from pathlib import Path

import numpy as np
import pystac
import pytest
import rasterio
import zarr

from pipelines.classes import CROPS, CloudClass, FloodClass, LandClass
from pipelines.demo import SIZES, build_archive, open_archive_info
from pipelines.demo.landscape import build_landscape
from pipelines.demo.optical import s2_scene
from pipelines.demo.phenology import build_phenology
from pipelines.errors import BadInputError

S2_KEYS = {
    "blue", "green", "red", "nir", "rededge1", "rededge2", "rededge3", "nir08", "swir16",
    "swir22", "scl",
}  # fmt: skip


@pytest.fixture(scope="module")
def archives(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """The tiny archive (seed 0) built twice: with 2 worker processes and in-process."""
    a = tmp_path_factory.mktemp("demo") / "a"
    b = tmp_path_factory.mktemp("demo") / "b"
    build_archive(str(a), size="tiny", seed=0, processes=2, progress=False)
    build_archive(str(b), size="tiny", seed=0, processes=1, progress=False)
    return a, b


@pytest.fixture(scope="module")
def archive(archives: tuple[Path, Path]) -> Path:
    return archives[0]


def _items(root: Path, collection: str) -> list[dict]:
    return json.loads((root / "stac" / "items" / f"{collection}.json").read_text())["features"]


def _read(path: Path) -> np.ndarray:
    with rasterio.open(path) as src:
        return src.read(1)


def _digest(path: Path, root: Path) -> str:
    data = path.read_bytes()
    if path.suffix in (".json", ".geojson"):
        data = data.replace(str(root).encode(), b"ROOT")
    return hashlib.sha256(data).hexdigest()


# --- determinism -------------------------------------------------------------------------------


def test_same_seed_gives_byte_identical_files(archives: tuple[Path, Path]) -> None:
    a, b = archives
    files_a = sorted(p.relative_to(a) for p in a.rglob("*") if p.is_file())
    files_b = sorted(p.relative_to(b) for p in b.rglob("*") if p.is_file())
    assert files_a == files_b
    assert sum(p.suffix == ".tif" for p in files_a) > 100
    for rel in files_a:
        assert _digest(a / rel, a) == _digest(b / rel, b), rel


def test_different_seed_differs() -> None:
    spec = SIZES["tiny"]
    l0, l1 = build_landscape(spec, 0), build_landscape(spec, 1)
    assert not np.array_equal(l0.parcels, l1.parcels)
    assert not np.array_equal(l0.dem, l1.dem)
    p0 = build_phenology(l0, spec.seasons, 0)
    d = dt.date(2025, 7, 21)
    kw = {"sun_azimuth": 140.0, "sun_elevation": 65.0}
    s_a = s2_scene(l0, p0, d, np.random.default_rng(0), **kw)
    s_b = s2_scene(l0, p0, d, np.random.default_rng(1), **kw)
    assert not np.array_equal(s_a.dn["B04"], s_b.dn["B04"])


# --- layout and STAC ---------------------------------------------------------------------------


def test_layout_and_archive_json(archive: Path) -> None:
    info = open_archive_info(str(archive))
    assert info["seed"] == 0 and info["size"] == "tiny" and info["crs"] == "EPSG:32650"
    assert info["resolution_m"] == 10.0 and info["width"] == 256
    for rel in info["truth"].values():
        assert (archive / rel).exists(), rel
    for name in ("province.geojson", "counties.geojson"):
        fc = json.loads((archive / name).read_text())
        assert fc["type"] == "FeatureCollection" and fc["features"]
    counties = json.loads((archive / "counties.geojson").read_text())["features"]
    assert {f["properties"]["county_id"] for f in counties} == {1, 2, 3, 4}
    for cid, count in info["collections"].items():
        assert len(_items(archive, cid)) == count
        assert (archive / "stac" / "collections" / f"{cid}.json").exists()
    flood = info["flood_event"]
    assert len(flood["pre"]) >= 2 and len(flood["post"]) >= 1
    s1_ids = {i["id"] for i in _items(archive, "sentinel-1-rtc")}
    assert set(flood["pre"]) | set(flood["post"]) <= s1_ids
    lc = _read(archive / "truth" / "landcover.tif")
    assert set(np.unique(lc)) >= {int(c) for c in CROPS} | {int(LandClass.RIVER)}
    cube = zarr.open_group(str(archive / "truth" / "s2.zarr"), mode="r")
    assert cube["B04"].shape == (info["collections"]["sentinel-2-l2a"], 256, 256)


def test_items_roundtrip_and_match_real_items(archive: Path, real_data: Path) -> None:
    real_dir = real_data / "stac-json" / "items"
    real_s2 = json.loads(
        next((real_dir / "earth-search-v1" / "sentinel-2-l2a").glob("*.json")).read_text()
    )
    real_s1 = json.loads(next((real_dir / "mpc" / "sentinel-1-rtc").glob("*.json")).read_text())
    for cid in ("sentinel-2-l2a", "sentinel-1-rtc", "cop-dem-glo-30"):
        coll = json.loads((archive / "stac" / "collections" / f"{cid}.json").read_text())
        assert pystac.Collection.from_dict(coll).id == cid
        for item in _items(archive, cid):
            assert pystac.Item.from_dict(item).to_dict()["id"] == item["id"]
            assert item["collection"] == cid
            assert isinstance(item["properties"]["proj:epsg"], int)
            for asset in item["assets"].values():
                assert asset["href"].startswith(str(archive))
    s2 = _items(archive, "sentinel-2-l2a")
    assert set(s2[0]["assets"]) == S2_KEYS
    for key, asset in s2[0]["assets"].items():
        ref = real_s2["assets"][key]
        assert set(asset["raster:bands"][0]) >= set(ref["raster:bands"][0])
        if "scale" in ref["raster:bands"][0]:
            assert asset["raster:bands"][0]["scale"] == ref["raster:bands"][0]["scale"]
            assert asset["raster:bands"][0]["offset"] == ref["raster:bands"][0]["offset"]
        assert set(asset) >= {"href", "type", "proj:shape", "proj:transform", "raster:bands"}
    for prop in ("eo:cloud_cover", "s2:processing_baseline", "platform", "constellation",
                 "instruments", "view:sun_azimuth", "view:sun_elevation", "grid:code"):  # fmt: skip
        assert prop in s2[0]["properties"]
    assert s2[0]["properties"]["s2:processing_baseline"].startswith("05.")
    s1 = _items(archive, "sentinel-1-rtc")[0]
    assert set(s1["assets"]) == {"vv", "vh"} <= set(real_s1["assets"])
    assert s1["assets"]["vv"]["raster:bands"] == real_s1["assets"]["vv"]["raster:bands"] or (
        s1["assets"]["vv"]["raster:bands"][0]["nodata"] == -32768
    )
    sar_sat = {k for k in real_s1["properties"] if k.startswith(("sar:", "sat:", "proj:"))}
    assert sar_sat <= set(s1["properties"])
    dem = _items(archive, "cop-dem-glo-30")[0]
    assert dem["properties"]["proj:epsg"] == 4326 and set(dem["assets"]) == {"data"}


def test_assets_match_their_metadata(archive: Path) -> None:
    item = _items(archive, "sentinel-2-l2a")[0]
    for key in ("blue", "swir16", "scl"):
        asset = item["assets"][key]
        with rasterio.open(asset["href"]) as src:
            assert list(src.shape) == asset["proj:shape"]
            assert list(src.transform)[:6] == asset["proj:transform"]
            assert src.dtypes[0] == asset["raster:bands"][0]["data_type"]
            assert src.nodata == 0
            assert src.crs.to_epsg() == 32650
            assert src.profile["blockxsize"] == 256 or src.profile["blockxsize"] == 512
    s1 = _items(archive, "sentinel-1-rtc")[0]
    with rasterio.open(s1["assets"]["vv"]["href"]) as src:
        assert src.dtypes[0] == "float32" and src.nodata == -32768
    dem = _items(archive, "cop-dem-glo-30")[0]["assets"]["data"]["href"]
    with rasterio.open(dem) as src:
        assert src.crs.to_epsg() == 4326
        assert abs(src.res[0] - 1 / 3600) < 1e-12
        h = src.read(1)
        assert 50 < float(h.mean()) < 200


# --- realism -----------------------------------------------------------------------------------


def _decode(dn: np.ndarray) -> np.ndarray:
    return dn.astype(np.float32) * 1e-4 - 0.1


def test_cloud_cover_equals_scl_fraction(archive: Path) -> None:
    covers = []
    for item in _items(archive, "sentinel-2-l2a"):
        scl = _read(Path(item["assets"]["scl"]["href"]))
        valid = scl > 0
        frac = 100.0 * np.isin(scl, (8, 9, 10))[valid].mean()
        assert abs(frac - item["properties"]["eo:cloud_cover"]) <= 2.0
        covers.append(frac)
    assert min(covers) < 5.0 and max(covers) > 30.0  # clear and cloudy scenes both occur


def _clear_ndvi_by_crop(archive: Path) -> dict[int, list[tuple[dt.date, float]]]:
    lc = _read(archive / "truth" / "landcover.tif")
    cube = zarr.open_group(str(archive / "truth" / "s2.zarr"), mode="r")
    cc, haze = cube["cloud_class"][:], cube["haze_density"][:]
    out: dict[int, list[tuple[dt.date, float]]] = {int(c): [] for c in CROPS}
    for t, item in enumerate(_items(archive, "sentinel-2-l2a")):
        red = _decode(_read(Path(item["assets"]["red"]["href"])))
        nir = _decode(_read(Path(item["assets"]["nir"]["href"])))
        ok = (cc[t] == CloudClass.CLEAR) & (haze[t] < 0.15)
        ndvi = (nir - red) / np.maximum(nir + red, 1e-6)
        when = dt.date.fromisoformat(item["properties"]["datetime"][:10])
        for c in out:
            m = ok & (lc == c)
            if m.sum() > 200:
                out[c].append((when, float(np.median(ndvi[m]))))
    return out


def test_crop_ndvi_peaks_in_season(archive: Path) -> None:
    series = _clear_ndvi_by_crop(archive)
    windows = {  # months of the peak (North China Plain calendar)
        LandClass.WHEAT: (3, 5),
        LandClass.CORN: (7, 9),
        LandClass.RICE: (7, 9),
        LandClass.COTTON: (7, 9),
        LandClass.SOYBEAN: (7, 9),
    }
    for crop, (m0, m1) in windows.items():
        s = series[int(crop)]
        assert len(s) >= 5, crop
        when, peak = max(s, key=lambda x: x[1])
        assert m0 <= when.month <= m1, (crop, when, peak)
        assert peak >= 0.7, (crop, peak)
        assert min(v for _, v in s) < 0.35, crop  # bare or stubble outside the season


def test_clear_sky_reflectance_ranges(archive: Path) -> None:
    lc = _read(archive / "truth" / "landcover.tif")
    lc20 = lc[::2, ::2]
    cube = zarr.open_group(str(archive / "truth" / "s2.zarr"), mode="r")
    checked = 0
    for t, item in enumerate(_items(archive, "sentinel-2-l2a")):
        ok = (cube["cloud_class"][t] == CloudClass.CLEAR) & (cube["haze_density"][t] < 0.1)
        if ok.mean() < 0.8:
            continue
        b = {k: _decode(_read(Path(item["assets"][k]["href"]))) for k in ("blue", "red", "nir")}
        sw = _decode(_read(Path(item["assets"]["swir16"]["href"])))
        ndvi = (b["nir"] - b["red"]) / (b["nir"] + b["red"])
        veg = ok & (ndvi > 0.7)
        if veg.sum() > 500:
            assert np.median(b["blue"][veg]) < 0.06 and np.median(b["red"][veg]) < 0.07
            assert np.median(b["nir"][veg]) > 0.3
        water = ok & (lc == LandClass.RIVER)
        assert np.median(b["nir"][water]) < 0.06 and np.median(b["red"][water]) < 0.12
        ok20 = ok[::2, ::2] & (lc20 == LandClass.RIVER)
        assert np.median(sw[ok20]) < 0.03
        urban = ok & (lc == LandClass.URBAN)
        assert np.median(b["blue"][urban]) > 0.08 and np.median(b["red"][urban]) > 0.1
        for arr in b.values():
            assert np.percentile(arr[ok], 0.5) > -0.01 and np.percentile(arr[ok], 99.5) < 0.6
        checked += 1
    assert checked >= 3


def test_haze_stronger_in_blue_than_nir(archive: Path) -> None:
    cube = zarr.open_group(str(archive / "truth" / "s2.zarr"), mode="r")
    haze = cube["haze_density"][:]
    cc = cube["cloud_class"][:]
    t = int(
        np.argmax([(h * (c == CloudClass.CLEAR)).mean() for h, c in zip(haze, cc, strict=True)])
    )
    item = _items(archive, "sentinel-2-l2a")[t]
    m = (haze[t] > 0.4) & (cc[t] == CloudClass.CLEAR)
    assert m.sum() > 1000
    obs_b = _decode(_read(Path(item["assets"]["blue"]["href"])))[m]
    obs_n = _decode(_read(Path(item["assets"]["nir"]["href"])))[m]
    clear_b = cube["B02"][t][m] * 1e-4
    clear_n = cube["B08"][t][m] * 1e-4
    added_blue = float(np.mean(obs_b - clear_b))
    assert added_blue > 0.03  # haze brightens blue
    assert added_blue > abs(float(np.mean(obs_n - clear_n)))
    # the apparent contrast loss (1 - t) is larger in blue
    slope_b = np.polyfit(clear_b, obs_b, 1)[0]
    slope_n = np.polyfit(clear_n, obs_n, 1)[0]
    assert slope_b < slope_n


def test_sar_backscatter_per_class_and_flood(archive: Path) -> None:
    info = open_archive_info(str(archive))
    lc = _read(archive / "truth" / "landcover.tif")
    flood = _read(archive / "truth" / "flood.tif")
    items = {i["id"]: i for i in _items(archive, "sentinel-1-rtc")}

    def db(item_id: str) -> np.ndarray:
        vv = _read(Path(items[item_id]["assets"]["vv"]["href"])).astype(np.float64)
        return np.where(vv == -32768, np.nan, 10 * np.log10(np.maximum(vv, 1e-6)))

    pre, post = info["flood_event"]["pre"][-1], info["flood_event"]["post"][0]
    vv = db(pre)
    water = np.isin(lc, (LandClass.WATER, LandClass.RIVER))
    assert np.nanmedian(vv[water]) < -15
    assert np.nanmedian(vv[lc == LandClass.URBAN]) > -5
    crops = np.isin(lc, [int(c) for c in CROPS if c != LandClass.RICE])
    assert -15 < np.nanmedian(vv[crops]) < -7
    fl = flood == FloodClass.FLOODED
    assert fl.mean() > 0.01
    low = fl & ~np.isin(lc, (LandClass.FOREST, LandClass.CORN, LandClass.URBAN))
    assert np.nanmedian(db(post)[low]) < -15 < np.nanmedian(vv[low])  # open water appears
    tall = fl & (lc == LandClass.FOREST)
    if tall.sum() > 50:  # flooded forest brightens (double bounce)
        assert np.nanmedian(db(post)[tall]) > np.nanmedian(vv[tall]) + 1
    # speckle: the linear coefficient of variation over a homogeneous area is ~1/sqrt(ENL)
    lin = 10 ** (vv[water & ~np.isnan(vv)] / 10)
    assert 0.35 < lin.std() / lin.mean() < 0.65


def test_yields_follow_vigour(archive: Path) -> None:
    rows = list(csv.DictReader((archive / "truth" / "yields.csv").open()))
    assert rows and {r["unit"] for r in rows} == {"t/ha"}
    assert {r["crop"] for r in rows} == {c.name.lower() for c in CROPS}
    assert all(float(r["yield"]) > 0 for r in rows)
    spec = SIZES["tiny"]
    land = build_landscape(spec, 0)
    phen = build_phenology(land, spec.seasons, 0)
    names = [c.name.lower() for c in CROPS]
    x, y = [], []
    for r in rows:
        k = names.index(r["crop"])
        x.append(phen.vigour[0, int(r["county_id"]), k])
        y.append(
            float(r["yield"]) / np.mean([float(q["yield"]) for q in rows if q["crop"] == r["crop"]])
        )
    assert np.corrcoef(x, y)[0, 1] > 0.8


# --- bad input and re-runs ---------------------------------------------------------------------


def test_bad_inputs(tmp_path: Path) -> None:
    with pytest.raises(BadInputError, match="size"):
        build_archive(str(tmp_path / "x"), size="huge")
    with pytest.raises(BadInputError, match="seed"):
        build_archive(str(tmp_path / "x"), size="tiny", seed=-1)
    with pytest.raises(BadInputError, match="seed"):
        build_archive(str(tmp_path / "x"), size="tiny", seed=True)  # type: ignore[arg-type]
    blocker = tmp_path / "file"
    blocker.write_text("not a folder")
    with pytest.raises(BadInputError, match="out"):
        build_archive(str(blocker / "archive"), size="tiny")
    with pytest.raises(BadInputError, match="archive"):
        open_archive_info(str(tmp_path / "nothing-here"))


def test_cli_maps_bad_input_to_exit_2(tmp_path: Path) -> None:
    from pipelines.cli import EXIT_BAD_INPUT, main

    assert main(["demo-archive", "--size", "huge", "--out", str(tmp_path)]) == EXIT_BAD_INPUT
    assert main(["demo-archive", "--size", "tiny", "--seed", "-3", "--out", str(tmp_path)]) == 2


def test_existing_archive_is_kept_or_refused(archive: Path) -> None:
    marker = archive / "archive.json"
    before = marker.stat().st_mtime_ns
    info = build_archive(str(archive), size="tiny", seed=0, progress=False)
    assert info.skipped and marker.stat().st_mtime_ns == before
    with pytest.raises(BadInputError, match="overwrite"):
        build_archive(str(archive), size="tiny", seed=5, progress=False)


def _killed(task):  # a worker process the kernel kills (out of memory)
    import os

    os._exit(137)


def test_a_killed_worker_ends_the_build_with_an_error(monkeypatch):
    from pipelines.demo import build

    monkeypatch.setattr(build, "_run_task", _killed)
    with pytest.raises(BadInputError, match="worker process died") as err:
        list(build._execute([{"kind": "s2", "index": i} for i in range(4)], processes=2))
    assert err.value.field == "processes"


def test_a_worker_that_dies_on_a_full_disk_is_reported_as_a_full_disk(monkeypatch, tmp_path):
    """A worker writing into a full disk dies as abruptly as one killed for memory: with under
    1 GiB free on the archive's disk the error names the folder and the space left."""
    import shutil
    from collections import namedtuple

    from pipelines.demo import build

    usage = namedtuple("usage", "total used free")
    monkeypatch.setattr(build, "_run_task", _killed)
    monkeypatch.setattr(shutil, "disk_usage", lambda path: usage(10 << 30, 10 << 30, 7 << 20))
    tasks = [{"kind": "s2", "index": i} for i in range(4)]
    with pytest.raises(BadInputError, match="7 MiB left on its disk") as err:
        list(build._execute(tasks, processes=2, root=str(tmp_path)))
    assert err.value.field == "out" and str(tmp_path) in str(err.value)


def test_an_archive_of_an_older_format_is_refused_until_built_again(tmp_path):
    """A format-1 demo archive says its S2 offset was applied to pixels that keep it: read
    today it would be 0.1 too dark. Opening it names the command that rebuilds it."""
    from pipelines.demo.build import ARCHIVE_FORMAT, open_archive_info

    (tmp_path / "archive.json").write_text(json.dumps({"format": 1, "size": "tiny", "seed": 0}))
    with pytest.raises(BadInputError, match="terrapipe demo-archive") as info:
        open_archive_info(str(tmp_path))
    assert info.value.field == "archive" and f"format {ARCHIVE_FORMAT}" in str(info.value)
    assert open_archive_info(str(tmp_path), any_format=True)["format"] == 1


def _no_space(task: dict) -> None:
    raise OSError(errno.ENOSPC, "No space left on device", "scene.tif")


@pytest.mark.parametrize("processes", [1, 2])
def test_a_build_that_runs_out_of_disk_names_the_folder(monkeypatch, tmp_path, processes):
    """A scene write that finds the disk full, in this process or in a worker, is a bad
    ``out`` folder: the error names it and says what would do."""
    from pipelines.demo import build

    monkeypatch.setattr(build, "_run_task", _no_space)
    tasks = [{"kind": "s2", "index": i} for i in range(2)]
    with pytest.raises(BadInputError, match="No space left on device") as err:
        list(build._execute(tasks, processes=processes, root=str(tmp_path)))
    assert err.value.field == "out" and str(tmp_path) in str(err.value)
    assert "MiB left on its disk" in str(err.value)
