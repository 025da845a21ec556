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


def _write_bgrn(path, img: np.ndarray, dtype: str = "float32") -> None:
    """A 10 m UTM GeoTIFF of (4, H, W) BGRN reflectance, bands named as S2 (``uint16``:
    scaled by 10,000 as L1C/L2A digital numbers)."""
    from pipelines.testing.scenes import write_geotiff

    data = np.round(img * 10_000).astype(dtype) if dtype == "uint16" else img.astype(dtype)
    write_geotiff(path, data, ["B02", "B03", "B04", "B08"], origin=(465181.05, 5080254.63))


def test_a_given_scene_is_scored_as_the_same_pixels_in_memory(tmp_path, real_data) -> None:
    """REAL: an eo-learn clear scene written as a GeoTIFF and given with --scene scores as the
    same scene scored from memory (read, scaled and cropped to a multiple of 4 alike)."""
    scenes = srdata.load_real_scenes(real_data)
    hr = scenes[sorted(scenes)[0]]
    padded = np.pad(hr, ((0, 0), (0, 3), (0, 2)), mode="edge")  # 103 x 102 px: cropped to 100
    _write_bgrn(tmp_path / "dn.tif", padded, "uint16")
    _write_bgrn(tmp_path / "refl.tif", padded)
    got = sreval.given_scene(tmp_path / "refl.tif")
    np.testing.assert_array_equal(got, hr)
    np.testing.assert_allclose(sreval.given_scene(tmp_path / "dn.tif"), hr, atol=5.1e-5)
    net = build_network(**SMALL).eval()
    deg = srdata.PROTOCOLS["gauss_mtf0.3"]
    given = sreval.given_scene_cases(deg, {"refl.tif": got})["given:refl.tif"]
    lr = srdata.degrade(hr, degradation=deg)
    assert sreval.compare(net, given, deg) == sreval.compare(
        net, [(pack_inputs([lr]), lr, hr)], deg
    )
    with pytest.raises(BadInputError, match="--scene"):
        _write_bgrn(tmp_path / "small.tif", hr[:, :16, :16])
        sreval.given_scene(tmp_path / "small.tif")


def test_a_given_scene_without_band_descriptions_is_read_by_the_names_given(
    tmp_path, real_data
) -> None:
    """REAL: an eo-learn L1C scene written as a 13-band stack without band descriptions is
    read, with its bands named in order (``--scene-bands``), as the same BGRN pixels."""
    from pipelines.geotiff import parse_band_names
    from pipelines.testing.scenes import write_geotiff
    from tests.conftest import L1C_BANDS

    raw = np.load(real_data / "eolearn-testeopatch" / "REFERENCE_SCENES.npy")[2]
    dn = np.round(raw.transpose(2, 0, 1) * 10_000).astype("uint16")
    write_geotiff(tmp_path / "stack.tif", dn, [], origin=(465181.05, 5080254.63))
    with pytest.raises(BadInputError, match="descriptions"):
        sreval.given_scene(tmp_path / "stack.tif")
    got = sreval.given_scene(tmp_path / "stack.tif", parse_band_names(",".join(L1C_BANDS), "x"))
    bgrn = [L1C_BANDS.index(b) for b in ("B02", "B03", "B04", "B08")]
    np.testing.assert_allclose(got, dn[bgrn, :100, :100] / np.float32(10_000), atol=1e-7)


def test_psf_reading_reports_the_anchors_used_beside_the_true_ones(real_data) -> None:
    """REAL eo-learn, shipped weights: under the box the reading picks the box anchor alone,
    the true one; under the Gaussian of MTF 0.3 the scenes read sharper than its anchor (part
    MTF 0.5, as docs/super_resolution.md says) and never blurrier than the floor allows."""
    net = sreval.load_network()
    box = srdata.PROTOCOLS["box"]
    read = sreval.psf_reading(
        net, sreval.real_eolearn_cases(box, real_data)["real_eolearn_1date"], box
    )
    assert read["true_anchor_weights"]["box"] == 1.0 and read["anchor_weights"]["box"] == 1.0
    gauss = srdata.PROTOCOLS["gauss_mtf0.3"]
    cases = sreval.real_eolearn_cases(gauss, real_data)["real_eolearn_1date"]
    read = sreval.psf_reading(net, cases, gauss)
    used, true = read["anchor_weights"], read["true_anchor_weights"]
    assert true["gauss_mtf0.30"] == 1.0 and sum(used.values()) == pytest.approx(1.0, abs=0.01)
    assert 0.0 < used["gauss_mtf0.30"] < 1.0 and used["gauss_mtf0.50"] > 0.0
    assert used["gauss_mtf0.15"] == 0.0  # the floor: never restored as the widest anchor
    low, high = read["blur_curvature_range"]
    assert low <= read["blur_curvature_median"] <= high and len(cases) == 3


def test_a_given_scene_is_drawn_under_every_protocol(tmp_path, real_data) -> None:
    """REAL eo-learn scene given with --scene and --figures: one PNG, named in the result, a
    row of input, bicubic, network and truth per protocol; the truth panel shows the scene's
    own pixels in the centred window."""
    from PIL import Image

    scenes = srdata.load_real_scenes(real_data)
    hr = scenes[sorted(scenes)[0]]
    _write_bgrn(tmp_path / "crop.tif", hr)
    net = build_network(**SMALL).eval()
    out = sreval.evaluate_super_resolution(
        net=net,
        real_data=str(real_data),
        threads=1,
        demo=False,
        scenes=[str(tmp_path / "crop.tif")],
        figures=tmp_path / "figures",
    )
    path = out["figures"]["given:crop.tif"]
    assert path == str(tmp_path / "figures" / "crop.png")
    image = np.asarray(Image.open(path).convert("RGB"))
    # one row a protocol (the noisy one included), 2.7 in each beside a 10 in width
    assert len(sreval.PROTOCOLS) == 4
    assert image.shape[0] > image.shape[1] * 0.27 * len(sreval.PROTOCOLS)
    assert len(np.unique(image.reshape(-1, 3), axis=0)) > 1000  # pictures, not blanks
