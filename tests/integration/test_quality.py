"""Quality bars of the classical stages against the tiny demo archive's truth.

The bars (DESIGN.md and the stage issue): cloud F1 >= 0.90; haze index Spearman >= 0.9 with the
true haze optical depth across mostly-clear scenes; classical dehaze raises PSNR over the hazy
input on >= 90 % of hazy scenes and lowers the NDVI error; flood_change IoU >= 0.80.
Measured on tiny seed 0: cloud F1 0.94, Spearman 0.96, dehaze 9/9 (24.7 -> 28.0 dB, NDVI MAE
0.112 -> 0.075), flood IoU 0.83 (permanent water 0.88).
"""

from __future__ import annotations

from pathlib import Path

import pytest

from pipelines.evaluate import evaluate_flood, evaluate_optical


@pytest.fixture(scope="module")
def optical(tiny_archive: Path) -> dict:
    return evaluate_optical(str(tiny_archive))


def test_cloud_mask_f1(optical):
    assert optical["cloud_f1"] >= 0.90, optical


def test_haze_index_ranks_haze(optical):
    assert optical["haze_ranked_scenes"] >= 10, optical  # enough scenes for a rank correlation
    assert optical["haze_spearman"] >= 0.90, optical


def test_dehaze_raises_psnr_and_lowers_ndvi_error(optical):
    assert optical["hazy_scenes"] >= 5, optical
    assert optical["dehaze_improved_fraction"] >= 0.90, optical
    assert optical["dehaze_psnr_mean"] > optical["dehaze_psnr_hazy_mean"], optical
    assert optical["ndvi_mae_dehazed"] < optical["ndvi_mae_hazy"], optical


def test_flood_change_iou(tiny_archive: Path):
    res = evaluate_flood(str(tiny_archive))
    assert res["flood_iou"] >= 0.80, res
    assert 0.8 < res["flooded_px_pred"] / res["flooded_px_true"] < 1.2, res
    assert res["permanent_water_iou"] >= 0.8, res
