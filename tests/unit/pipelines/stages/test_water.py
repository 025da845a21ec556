"""water_mask thresholding pinned on synthetic bimodal, unimodal-land and VH-only-separable scenes.

Histograms here are tiny and exact (no speckle); the scenes are 4.4-look gamma speckle in dB.
"""

from __future__ import annotations

import numpy as np
import pytest

from pipelines.errors import BadInputError
from pipelines.stages import water as W
from pipelines.testing.scenes import band_cube, sar_land_cover_fields

N = 128
YY, XX = np.mgrid[0:N, 0:N]
LAKE = (YY - 64) ** 2 + (XX - 40) ** 2 < 30**2
BANDS = ("VV", "VH")


def _hist(*modes: tuple[float, float, int]) -> np.ndarray:
    """Exact histogram over the stage's bins of Gaussian modes (mean dB, std dB, pixels)."""
    rng = np.random.default_rng(0)
    vals = np.concatenate([rng.normal(m, s, n) for m, s, n in modes])
    return np.histogram(vals, bins=W._BINS)[0].astype("float64")


def _scene(vv: np.ndarray, vh: np.ndarray, seed: int) -> np.ndarray:
    """(1, band=[VV, VH], y, x) dB of noise-free dB maps with 4.4-look gamma speckle."""
    rng = np.random.default_rng(seed)
    out = np.empty((1, 2, N, N), dtype="float32")
    for b, db in enumerate((vv, vh)):
        lin = 10 ** (np.asarray(db, "float64") / 10) * rng.gamma(4.4, 1 / 4.4, (N, N))
        out[0, b] = 10 * np.log10(lin)
    return out


def _iou(a: np.ndarray, b: np.ndarray) -> float:
    return float((a & b).sum() / (a | b).sum())


def test_ashman_d_on_split_sides_separates_one_mode_from_two():
    # A single Gaussian split by Otsu has D = 2.65 on its halves: below the bar.
    one = _hist((-16.0, 1.0, 200_000))
    _, _, m1, m2, v1, v2 = W._split(one, W.F.otsu_from_hist(one, W._BINS))
    assert W.ashman_d(m1, m2, v1, v2) == pytest.approx(2.65, abs=0.05)
    assert not W._water_mode(one, W.F.otsu_from_hist(one, W._BINS), "VH")
    # Two even modes whose components have Ashman's D = 2.2 (just separated) pass.
    two = _hist((-28.2, 1.0, 100_000), (-26.0, 1.0, 100_000))
    assert W._water_mode(two, W.F.otsu_from_hist(two, W._BINS), "VH")


def test_threshold_of_bimodal_pool_lies_between_water_and_land():
    pool = _hist((-27.0, 1.0, 3000), (-16.0, 1.5, 9000))
    thr = W.scene_threshold(pool, 5, pool, "VH")
    assert -24.0 < thr < -19.0


def test_threshold_of_land_only_scene_is_not_forced_into_land():
    # No bimodal sub-tile, and the whole histogram is one land mode: the fallback threshold.
    land = _hist((-17.0, 2.0, 20_000))
    assert W.scene_threshold(np.zeros_like(land), 0, land, "VH") == W.FALLBACK_DB["VH"]
    assert W.scene_threshold(np.zeros_like(land), 0, land, "VV") == W.FALLBACK_DB["VV"]


def test_global_otsu_fallback_and_physical_clamp():
    # No bimodal sub-tile but a water mode in the whole histogram: the global Otsu split.
    scene = _hist((-26.0, 1.0, 4000), (-15.0, 1.5, 16000))
    thr = W.scene_threshold(np.zeros_like(scene), 0, scene, "VH")
    assert thr == pytest.approx(W.F.otsu_from_hist(scene, W._BINS))
    rule = W._scene_threshold_rule(np.zeros_like(scene), 0, scene, "VH")[1]
    assert W.THRESHOLD_RULES[rule] == "global split"
    # A split of two land covers (bare soil -20 dB VH next to crops -12 dB) is clamped to the
    # top of the published water range.
    soil = _hist((-20.0, 1.0, 5000), (-12.0, 1.0, 5000))
    assert W.scene_threshold(soil, 3, soil, "VH") == W.WATER_DB["VH"][1]


def test_rough_water_split_needs_its_dark_side_dark_in_vv_too():
    # One VH split of rough water (-23 dB, above the -25 dB limit on a water mode's mean) and
    # land (-15 dB), no bimodal sub-tile: a candidate, taken only when its dark side is dark
    # in VV too.
    scene = _hist((-23.0, 1.0, 4000), (-15.0, 1.5, 16000))
    none = np.zeros_like(scene)
    split = W.rough_water_split(0, scene, "VH")
    assert split == pytest.approx(W.F.otsu_from_hist(scene, W._BINS))
    assert W.scene_threshold(none, 0, scene, "VH") == W.FALLBACK_DB["VH"]  # the strict test
    # The VV of the pixels below the split, on dates of 20,000 px: water (-18 dB) beside bare
    # soil (-13.5 dB): its own class, dark in VV, 20 % of the date; bare soil and grass alone;
    # one soil mode at -14.5 dB whose tail below -15 dB (3,100 px) is no class of its own; and
    # water too small a class (1,500 px, 7.5 %).
    dates = [
        _hist((-18.0, 1.0, 4000), (-13.5, 1.0, 2000)),
        _hist((-13.5, 1.0, 6000), (-11.5, 1.0, 3000)),
        _hist((-14.5, 1.0, 10_000)),
        _hist((-18.0, 1.0, 1500), (-13.5, 1.0, 6000)),
    ]
    fallback = W.THRESHOLD_RULES.index("fallback")
    decisions = np.array([[W.FALLBACK_DB["VH"], split, 20_000.0, fallback]] * len(dates))
    no_dark_both = np.zeros((len(dates), 1))
    got = W._settle_np(decisions, np.hstack([np.stack(dates), no_dark_both]), "VH")
    taken = min(split, W.WATER_DB["VH"][1])
    assert list(got) == [taken] + [W.FALLBACK_DB["VH"]] * 3
    count, mean = W.vv_dark_class(dates[0])
    assert count == pytest.approx(4000, rel=0.02) and mean == pytest.approx(-18.0, abs=0.1)
    assert W.vv_dark_class(dates[2])[0] == 10_000  # one mode: the whole histogram
    # No candidate: with a bimodal sub-tile, a strict water mode, VV deciding, or a dark side
    # above the VH water range (two land covers).
    assert np.isnan(W.rough_water_split(3, scene, "VH"))
    assert np.isnan(W.rough_water_split(0, _hist((-27.0, 1.0, 4000), (-15.0, 1.5, 16000)), "VH"))
    assert np.isnan(W.rough_water_split(0, scene, "VV"))
    assert np.isnan(W.rough_water_split(0, _hist((-19.0, 0.7, 5000), (-12.0, 1.0, 5000)), "VH"))


def test_rough_water_is_found_and_dark_soil_is_not():
    # Wind- or rain-roughened flood water: VH -23 dB, VV -18 dB; no sub-tile has a water mode
    # below -25 dB, so the global split decides, confirmed by VV.
    vv = np.where(LAKE, -18.0, -9.0)
    vh = np.where(LAKE, -23.0, -16.0)
    res = W.water_mask(band_cube(_scene(vv, vh, seed=9), BANDS, 64)).values[0]
    assert _iou(res == W.WATER_WATER, LAKE) > 0.9
    # The same shapes as dry bare soil: as dark in VH, bright in VV (-12 dB): no water.
    vv = np.where(LAKE, -12.0, -9.0)
    res = W.water_mask(band_cube(_scene(vv, vh, seed=9), BANDS, 64)).values[0]
    assert (res == W.WATER_WATER).mean() < 0.005


def test_a_date_filled_with_rough_water_is_water():
    """A lake or the sea filling a tile, roughened (VH -23, VV -17 dB): no split can measure
    water against land when land is under 10 % of the date. Before, a Otsu split inside the
    water's own mode kept 43 % of a tile of water and none at 93-98 %; the date now takes the
    top of the VH water range, so every pixel dark in both channels is water."""
    for share in (1.0, 0.95):
        land = np.greater_equal(XX, int(N * share))
        vv = np.where(land, -10.0, -17.0)
        vh = np.where(land, -16.5, -23.0)
        res = W.water_mask(band_cube(_scene(vv, vh, seed=1), BANDS, 64)).values[0]
        assert (res[~land] == W.WATER_WATER).mean() > 0.97
        assert not (res[land] == W.WATER_WATER).any()
    # The rule in isolation: 90 % of the date dark in both channels; 89 % is not enough.
    fallback = W.THRESHOLD_RULES.index("fallback")
    decisions = np.array([[W.FALLBACK_DB["VH"], np.nan, 1000.0, fallback]] * 2)
    evidence = np.zeros((2, len(W._BINS)))
    evidence[:, -1] = (900.0, 890.0)
    got = W._settle_np(decisions, evidence, "VH")
    assert list(got) == [W.WATER_DB["VH"][1], W.FALLBACK_DB["VH"]]
    # A tile of dry bare soil as dark in VH (-22 dB) but not in VV (-14 dB) stays dry.
    vv, vh = np.full((N, N), -14.0), np.full((N, N), -22.0)
    res = W.water_mask(band_cube(_scene(vv, vh, seed=2), BANDS, 64)).values[0]
    assert (res == W.WATER_WATER).mean() < 0.005


def test_each_date_names_the_rule_that_set_its_threshold():
    """threshold_rule_of says which rule set each date's threshold: a calm lake beside land
    (the bimodal sub-tiles), land alone (the fixed fallback), a rough lake (the rough-water
    split) and rough water filling the tile (water-dominated); VV alone knows the first two."""
    land_vv, land_vh = np.full((N, N), -9.0), np.full((N, N), -16.0)
    maps = {
        "sub-tiles": (np.where(LAKE, -21.0, land_vv), np.where(LAKE, -28.0, land_vh)),
        "fallback": (land_vv, land_vh),
        "rough-water split": (np.where(LAKE, -18.0, land_vv), np.where(LAKE, -23.0, land_vh)),
        "water-dominated": (np.full((N, N), -17.0), np.full((N, N), -23.0)),
    }
    data = np.concatenate([_scene(vv, vh, seed=k) for k, (vv, vh) in enumerate(maps.values())])
    cube = band_cube(data, BANDS, 64)
    vv, vh = (W.speckle_filter(cube.sel(band=b)).data for b in BANDS)
    rules = W.threshold_rule_of(vh, "VH", 64, vv=vv).compute()
    assert [W.THRESHOLD_RULES[r] for r in rules] == list(maps)
    thresholds = W.threshold_of(vh, "VH", 64, vv=vv).compute()
    assert thresholds[1] == W.FALLBACK_DB["VH"] and thresholds[3] == W.WATER_DB["VH"][1]
    only_vv = W.threshold_rule_of(vv, "VV", 64).compute()
    assert [W.THRESHOLD_RULES[r] for r in only_vv[:2]] == ["sub-tiles", "fallback"]


def test_land_only_scene_stays_dry():
    # Heterogeneous land: crops, grass and dark bare soil (VH -21 dB), no water at all.
    rng = np.random.default_rng(4)
    vh = rng.choice([-13.0, -17.0, -21.0], size=(N // 16, N // 16)).repeat(16, 0).repeat(16, 1)
    vv = vh + 7.0
    res = W.water_mask(band_cube(_scene(vv, vh, seed=5), BANDS, 64)).values[0]
    assert (res == W.WATER_WATER).mean() < 0.005


def test_vh_decides_where_vv_does_not_separate():
    # Wind-roughened water: VV -16 dB, as dark as the fields beside it (-16.5 dB); VH separates.
    vv = np.where(LAKE, -16.0, -16.5)
    vh = np.where(LAKE, -26.0, -17.0)
    res = W.water_mask(band_cube(_scene(vv, vh, seed=6), BANDS, 64)).values[0]
    assert _iou(res == W.WATER_WATER, LAKE) > 0.9


def test_vv_vetoes_cross_pol_dark_bright_surfaces():
    # dry bare soil: VH -22 dB, below the scene's threshold like the lake's, VV -12 dB unlike it
    soil = (YY > 100) & (XX > 90)
    vv = np.where(LAKE, -21.0, np.where(soil, -12.0, -9.0))
    vh = np.where(LAKE, -27.0, np.where(soil, -22.0, -16.0))
    res = W.water_mask(band_cube(_scene(vv, vh, seed=7), BANDS, 64)).values[0]
    assert (res[soil] == W.WATER_WATER).mean() < 0.01
    assert _iou(res == W.WATER_WATER, LAKE) > 0.9


def test_a_windy_lake_dark_in_vh_is_water_whatever_its_vv():
    """Wind roughens water in VV far more than in VH: a lake at VV -13 dB (above the VV water
    range) and VH -26 dB (below every land cover) is water, its edge too, which the speckle
    filter brightens above -25 dB in VH. With the VV check on every pixel all of it was land
    (IoU 0.0); with VH alone deciding below -25 dB but not at the edge, 0.87."""
    vv = np.where(LAKE, -13.0, -9.0)
    vh = np.where(LAKE, -26.0, -16.0)
    res = W.water_mask(band_cube(_scene(vv, vh, seed=9), BANDS, 64)).values[0]
    assert _iou(res == W.WATER_WATER, LAKE) > 0.97


def test_minimum_mapping_unit():
    pond = (YY - 20) ** 2 + (XX - 110) ** 2 < 3**2  # 29 px of 10 m: 0.29 ha < 0.5 ha
    vv = np.where(LAKE | pond, -21.0, -9.0)
    vh = np.where(LAKE | pond, -28.0, -16.0)
    cube = band_cube(_scene(vv, vh, seed=8), BANDS, 64)
    assert not (W.water_mask(cube).values[0][pond] == W.WATER_WATER).any()
    assert (W.water_mask(cube, mmu_ha=0.0).values[0][pond] == W.WATER_WATER).mean() > 0.5
    with pytest.raises(BadInputError, match="mmu_ha"):
        W.water_mask(cube, mmu_ha=-1.0)


def test_minimum_mapping_unit_on_a_grid_in_degrees():
    """A chip in EPSG:4326 (as Sen1Floods11 ships them; 9e-5 degrees is 10 m at the equator):
    the mapping unit is counted in hectares on the ground, not in square degrees."""
    import rioxarray  # noqa: F401  (the .rio accessor)

    pond = (YY - 20) ** 2 + (XX - 110) ** 2 < 3**2  # 29 px of 10 m: 0.29 ha < 0.5 ha
    vv = np.where(LAKE | pond, -21.0, -9.0)
    vh = np.where(LAKE | pond, -28.0, -16.0)
    metres = band_cube(_scene(vv, vh, seed=8), BANDS, 64)
    step = 10.0 / 111_320.0
    degrees = metres.assign_coords(
        x=30.0 + step * (np.arange(N) + 0.5), y=0.5 - step * (np.arange(N) + 0.5)
    ).rio.write_crs("EPSG:4326")
    got = W.water_mask(degrees).values[0]
    assert not (got[pond] == W.WATER_WATER).any()  # below the mapping unit, as in metres
    np.testing.assert_array_equal(got, W.water_mask(metres).values[0])


def test_a_date_of_water_is_computed_from_that_date_alone():
    """Each date's threshold reads its own date only: the graph of one date's water, culled,
    filters and thresholds that date and no other (a run computing a year in rounds of dates,
    or redoing one failed date, does not recompute the others)."""
    from dask.base import collections_to_expr

    rng = np.random.default_rng(4)
    n = 128  # the side of _scene's planes
    data = np.concatenate(
        [
            _scene(np.full((n, n), -12.0), np.where(rng.random((n, n)) < 0.3, -26.0, -18.0), k)
            for k in range(4)
        ]
    )
    water = W.water_mask(band_cube(data, BANDS, 64))
    expected = water.values[2]
    one = water.isel(time=[2])
    graph = collections_to_expr([one.data], optimize_graph=True).optimize().__dask_graph__()
    inputs = {k for k in graph if isinstance(k, tuple) and str(k[0]).startswith("array-")}
    assert {k[1] for k in inputs} == {2}  # the input chunks of that date only
    np.testing.assert_array_equal(one.values[0], expected)


def test_rough_water_among_land_covers_with_dark_soil():
    """Rough water (VV -17, VH -23 dB) among fields of forest, crops, grass and dry bare soil.
    The global VH split lies between grass and crops and its sides are not separated (Ashman's
    D 2.6: the covers leave no gap); below it lie the water, the soil and part of the grass,
    whose mean VV (about -15 dB) says nothing. What decides is whether the VV of the pixels
    below the split holds a class of its own in the VV water range (>= 10 % of the date): it
    does with the lake (17 %), and does not without it, nor where bare soil covers half the
    scene, nor where that soil lies at VV -14.5 dB, whose darker fields (a third) fall below
    -15 dB. With the mean VV deciding, or with a separated VH split required, the lake was
    land (IoU 0.0; a global VH Otsu 0.35); with the pixels dark in both channels counted as a
    class, 16 % of the last scene was water."""
    from skimage.filters import threshold_otsu

    from pipelines.testing.scenes import SAR_LAND_COVERS_DB

    shares = (0.2, 0.35, 0.25, 0.15, 0.05)
    vv, vh = sar_land_cover_fields(3, N, N, shares)
    scene = _scene(np.where(LAKE, -17.0, vv), np.where(LAKE, -23.0, vh), seed=3)
    res = W.water_mask(band_cube(scene, BANDS, 64)).values[0]
    otsu = scene[0, 1] < threshold_otsu(scene[0, 1])
    assert _iou(res == W.WATER_WATER, LAKE) > max(0.9, _iou(otsu, LAKE) + 0.5)
    darker_soil = list(SAR_LAND_COVERS_DB)
    darker_soil[3] = (-14.5, -22.0)
    half_soil = (0.1, 0.2, 0.15, 0.5, 0.05)
    for seed, land, covers in (
        (3, shares, SAR_LAND_COVERS_DB),
        (4, half_soil, SAR_LAND_COVERS_DB),
        (1, half_soil, darker_soil),
    ):
        vv, vh = sar_land_cover_fields(seed, N, N, land, covers=covers)
        res = W.water_mask(band_cube(_scene(vv, vh, seed=seed), BANDS, 64)).values[0]
        assert (res == W.WATER_WATER).mean() < 0.005, (seed, land)
