"""Super-resolution evaluation: the interior figures beside the whole-image ones."""

from __future__ import annotations

import numpy as np
import pytest

from models import metrics as M
from models.super_resolution import data as srdata
from models.super_resolution import evaluate as sreval
from models.super_resolution.network import SCALE, build_network, pack_inputs
from pipelines.errors import BadInputError

SMALL = {"features": 8, "date_features": 4, "sar_features": 4, "blocks": 2}

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def _image(seed: int = 0, size: int = 48) -> np.ndarray:
    return np.random.default_rng(seed).uniform(0.02, 0.5, (4, size, size)).astype(np.float32)


def test_interior_border_is_the_degradation_padding() -> None:
    # degrade() reflect-pads (KERNEL_TAPS - SCALE) / 2 high-res px: 8 at 4x, 2 low-res px
    assert sreval.INTERIOR_BORDER_PX == 8
    assert sreval.INTERIOR_BORDER_PX % SCALE == 0


def test_interior_scores_leave_the_border_out() -> None:
    ref = _image(0, size=40)
    pred = ref.copy()
    pred[:, :8, :] += 0.1  # errors only within the 8 px border
    pred[:, :, -8:] -= 0.1
    assert sreval.interior_scores(pred, ref)["psnr"] == float("inf")
    assert sreval.interior_scores(pred, ref, border=7)["psnr"] < 40.0
    inner = (slice(None), slice(8, 32), slice(8, 32))
    noisy = pred + np.random.default_rng(1).normal(0, 0.01, pred.shape).astype(np.float32)
    got = sreval.interior_scores(noisy, ref)
    assert got["psnr"] == pytest.approx(M.psnr(noisy[inner], ref[inner]))
    assert got["sam_deg"] == pytest.approx(M.sam_degrees(noisy[inner], ref[inner]))
    whole = sreval.interior_scores(noisy, ref, border=0)
    assert whole["psnr"] == pytest.approx(M.psnr(noisy, ref))


@pytest.mark.parametrize("border", [-1, 20, 25])
def test_interior_scores_reject_a_border_that_leaves_nothing(border: int) -> None:
    ref = _image(0, size=40)
    with pytest.raises(BadInputError, match="border"):
        sreval.interior_scores(ref, ref, border=border)


def test_comparison_reports_the_interior_beside_the_whole_image() -> None:
    net = build_network(**SMALL).eval()
    deg = srdata.PROTOCOLS["gauss_mtf0.3"]
    cases = []
    for seed in (0, 1):
        hr = _image(seed, size=48)
        lr = srdata.degrade(hr, degradation=deg)
        cases.append((pack_inputs([lr]), lr, hr))
    out = sreval.compare(net, cases, deg)
    inner = out["interior"]
    assert inner["border_px"] == sreval.INTERIOR_BORDER_PX
    assert set(inner["model"]) == set(inner["bicubic"]) == {"psnr", "sam_deg"}
    # bicubic's interior figure is the mean over the cases of its cropped PSNR
    expected = np.mean(
        [sreval.interior_scores(srdata.bicubic(lr), hr)["psnr"] for _, lr, hr in cases]
    )
    assert inner["bicubic"]["psnr"] == pytest.approx(expected, abs=1e-4)
    assert inner["psnr_gain_db"] == pytest.approx(
        inner["model"]["psnr"] - inner["bicubic"]["psnr"], abs=2e-3
    )
    assert inner["sam_gain_deg"] == pytest.approx(
        inner["bicubic"]["sam_deg"] - inner["model"]["sam_deg"], abs=2e-4
    )
    # the whole-image figures are unchanged by the interior ones
    whole = np.mean([M.psnr(srdata.bicubic(lr), hr) for _, lr, hr in cases])
    assert out["bicubic"]["psnr"] == pytest.approx(whole, abs=1e-4)
