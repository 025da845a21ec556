"""Super-resolution under several PSFs: the degradations, the PSF mixing, the protocol evaluation
and the shipped weights against bicubic under a box PSF on real S2."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from models.super_resolution import data as srdata
from models.super_resolution import evaluate as sreval
from models.super_resolution.network import SCALE, SuperResolutionNet, build_network, pack_inputs
from pipelines.errors import BadInputError

SMALL = {"features": 8, "date_features": 4, "sar_features": 4, "blocks": 2}


pytestmark = pytest.mark.usefixtures("one_torch_thread")


def _image(seed: int = 0, c: int = 4, size: int = 48) -> np.ndarray:
    return np.random.default_rng(seed).uniform(0.02, 0.5, (c, size, size)).astype(np.float32)


def _perturbed_network() -> SuperResolutionNet:
    """A small network in eval mode whose all-zero parameters (the zero-initialised residual
    heads) are drawn from N(0, 0.05), so that every path contributes (seed 0)."""
    torch.manual_seed(0)
    net = build_network(**SMALL).eval()
    with torch.no_grad():
        for p in net.parameters():
            if not p.any():
                p.normal_(0.0, 0.05)
    return net


# ------------------------------------------------------------------------------ kernels


def test_box_psf_keeps_block_means_exactly():
    hr = _image()
    blocks = hr.reshape(4, 12, 4, 12, 4).mean(axis=(2, 4))
    box = srdata.Degradation("box")
    np.testing.assert_allclose(srdata.degrade(hr, degradation=box), blocks, rtol=0, atol=1e-6)
    m = srdata.MARGIN_LR
    inner = blocks[:, m:-m, m:-m]
    np.testing.assert_allclose(srdata.degrade_valid(hr, box), inner, rtol=0, atol=1e-6)


@pytest.mark.parametrize("mtf", [0.15, 0.3, 0.5, 0.65])
@pytest.mark.parametrize("shift", [0.0, 0.25])
def test_gaussian_mtf_at_nyquist_is_the_requested_one(mtf, shift):
    k = srdata.psf_kernel("gauss", mtf, shift)
    assert k.shape == (srdata.KERNEL_TAPS,) and k.sum() == pytest.approx(1.0, abs=1e-12)
    assert srdata.mtf_at_nyquist(k) == pytest.approx(mtf, abs=0.005)


def test_bicubic_kernel_is_keys_and_sums_to_one():
    assert srdata.keys_cubic(np.array([0.0, 1.0, 2.0, 2.5])) == pytest.approx([1, 0, 0, 0])
    k = srdata.psf_kernel("bicubic")
    assert k.sum() == pytest.approx(1.0, abs=1e-12)
    np.testing.assert_allclose(k, k[::-1], atol=1e-15)  # symmetric about the block centre
    assert k.min() < 0  # the negative lobes of a = -0.5
    assert 0.45 < srdata.mtf_at_nyquist(k) < 0.55  # between the Wald Gaussian and the box


def test_shift_moves_the_psf_centre():
    x = np.arange(srdata.KERNEL_TAPS) - (srdata.KERNEL_TAPS - 1) / 2
    for kind in srdata.PSF_KINDS:
        k = srdata.psf_kernel(kind, 0.3, 0.25)
        assert float(np.sum(k * x)) == pytest.approx(0.25 * SCALE, abs=0.02), kind


def test_noise_has_the_s2_sigma_per_band():
    lr = np.full((4, 200, 200), 0.2, np.float32)
    noisy = srdata.add_noise(lr, srdata.Degradation(noise=1.0), np.random.default_rng(0))
    np.testing.assert_allclose(noisy.std(axis=(1, 2)), srdata.S2_NOISE_SIGMA, rtol=0.03)
    assert noisy.dtype == np.float32
    with pytest.raises(BadInputError, match="rng"):
        srdata.add_noise(lr, srdata.Degradation(noise=1.0), None)


@pytest.mark.parametrize(
    ("kwargs", "field"),
    [({"kind": "lanczos"}, "psf kind"), ({"shift": 0.7}, "shift"), ({"mtf": 1.2}, "mtf")],
)
def test_psf_kernel_rejects_bad_input(kwargs, field):
    with pytest.raises(BadInputError, match=field):
        srdata.psf_kernel(**kwargs)


def test_sampled_degradations_cover_the_ranges():
    rng = np.random.default_rng(0)
    draws = [srdata.sample_degradation(rng) for _ in range(400)]
    kinds = [d.kind for d in draws]
    assert set(kinds) == set(srdata.PSF_KINDS)
    assert 0.4 < kinds.count("gauss") / 400 < 0.6
    mtfs = [d.mtf for d in draws if d.kind == "gauss"]
    assert srdata.MTF_RANGE[0] <= min(mtfs) < 0.2 and 0.6 < max(mtfs) <= srdata.MTF_RANGE[1]
    shifts = np.array([d.shift for d in draws])
    assert np.abs(shifts).max() <= srdata.MAX_SHIFT_LR and 0.3 < (shifts != 0).mean() < 0.7
    assert all(0 <= d.noise <= 1 for d in draws)
    again = [srdata.sample_degradation(np.random.default_rng(0)) for _ in range(1)]
    assert again[0] == draws[0]  # reproducible with the seed


# ------------------------------------------------------------------------------ network


def test_psf_weights_are_a_partition_and_mix_the_anchors():
    net = _perturbed_network()
    x = torch.from_numpy(pack_inputs([_image(1, size=12)]))[None]
    with torch.no_grad():
        w = net.psf_weights(x)
        assert w.shape == (1, len(srdata.ANCHOR_PSFS), 1, 1)  # one estimate for the scene
        torch.testing.assert_close(w.sum(dim=1), torch.ones(1, 1, 1))
        ref = x[:, :4]
        one_hot = torch.zeros_like(w)
        one_hot[:, 0] = 1
        net.block_kernel[0].zero_()  # an anchor whose block filter is zero: targets = input
        torch.testing.assert_close(net.block_targets(ref, one_hot.expand(-1, -1, 12, 12)), ref)
        assert not torch.allclose(net.block_targets(ref, w.expand(-1, -1, 12, 12)), ref)


def _eolearn_lr(real_data, protocol: str) -> np.ndarray:
    scene = next(iter(srdata.load_real_scenes(real_data).values()))
    return srdata.degrade(scene, degradation=srdata.PROTOCOLS[protocol])


def test_scene_blur_tells_a_sharp_psf_from_a_wide_one(real_data):
    from models.super_resolution.network import scene_blur

    values = {}
    for name in ("gauss_mtf0.3", "bicubic", "box"):
        value = scene_blur(torch.from_numpy(_eolearn_lr(real_data, name))[None])
        assert value.shape == (1, 1, 1, 1) and torch.isfinite(value).all()
        values[name] = float(value)
    assert values["gauss_mtf0.3"] + 0.2 < values["bicubic"] < values["box"]


def test_scene_blur_ignores_nodata_and_prefers_texture_to_noise(real_data):
    from models.super_resolution.network import S2_NOISE_SIGMA, blur_evidence, scene_blur

    lr = _eolearn_lr(real_data, "gauss_mtf0.3")  # (4, 25, 25): textured everywhere
    ref = torch.from_numpy(np.concatenate([lr, lr[:, :, ::-1]], axis=2).copy())[None]
    valid = torch.ones(1, 1, 25, 50)
    valid[..., 40:] = 0.0
    other = ref.clone()
    other[..., 40:] = 0.0  # nodata filled with zeros, as pack_inputs does
    # what lies on (or next to) invalid pixels does not count
    torch.testing.assert_close(scene_blur(ref, valid), scene_blur(other, valid))
    assert not torch.allclose(scene_blur(ref), scene_blur(other))
    # a flat strip with S2 noise after the PSF reads as the sharpest PSF; its windows are left out
    rng = np.random.default_rng(0)
    sigma = np.asarray(S2_NOISE_SIGMA, np.float32)[:, None, None]
    flat = (0.1 + sigma * rng.standard_normal((4, 25, 40))).astype(np.float32)
    mixed = torch.from_numpy(np.concatenate([lr, flat], axis=2))[None]
    alone = float(scene_blur(torch.from_numpy(lr)[None]))
    every = float(blur_evidence(mixed, textured=False)[0].median())
    assert float(scene_blur(torch.from_numpy(flat)[None])) > alone + 1.0  # no texture: noise
    assert abs(float(scene_blur(mixed)) - alone) < abs(every - alone)


def test_anchor_weights_interpolate_between_the_enclosing_anchors():
    from models.super_resolution.network import anchor_weights

    calibration = torch.tensor([-0.2, 0.1, 0.45, 0.7, 0.55])  # not in sharpness order
    ratio = torch.tensor([-3.0, -0.2, 0.0, 0.3, 0.6, 0.7, 4.0]).view(1, 1, 1, -1)
    w = anchor_weights(ratio, calibration)[0, :, 0].T  # (pixel, anchor)
    expected = torch.zeros(7, 5)
    expected[0, 0] = expected[1, 0] = 1.0  # at or beyond the widest anchor: that anchor alone
    expected[2, 0], expected[2, 1] = 1 / 3, 2 / 3
    expected[3, 1], expected[3, 2] = 0.15 / 0.35, 0.2 / 0.35
    expected[4, 4], expected[4, 3] = 2 / 3, 1 / 3  # between 0.55 (anchor 4) and 0.7 (anchor 3)
    expected[5, 3] = expected[6, 3] = 1.0
    torch.testing.assert_close(w, expected)
    uniform = anchor_weights(ratio, torch.zeros(5))
    torch.testing.assert_close(uniform, torch.full((1, 5, 1, 7), 0.2))


def test_anchor_mix_of_known_degradations():
    labels = [d.label for d in srdata.ANCHOR_PSFS]
    for kind in ("box", "bicubic"):
        mix = srdata.anchor_mix(srdata.Degradation(kind))
        assert mix[labels.index(kind)] == 1.0 and mix.sum() == 1.0
    for mtf, (lo, hi) in ((0.3, (0.3, 0.3)), (0.4, (0.3, 0.5)), (0.6, (0.5, "box"))):
        mix = srdata.anchor_mix(srdata.Degradation("gauss", mtf, (0.1, 0.0), 0.5))
        assert mix.sum() == pytest.approx(1.0)
        used = {labels[i] for i in np.flatnonzero(mix > 1e-4)}
        named = {f"gauss_mtf{v:.2f}" if isinstance(v, float) else v for v in (lo, hi)}
        assert used == named, (mtf, mix)
    assert srdata.anchor_mix(srdata.Degradation("gauss", 0.15))[0] == 1.0


def test_known_psf_weights_replace_the_estimate():
    net = _perturbed_network()
    x = torch.from_numpy(pack_inputs([_image(2, size=12)]))[None]
    one_hot = torch.zeros(1, len(srdata.ANCHOR_PSFS), 1, 1)
    one_hot[0, 1] = 1.0
    with torch.no_grad():
        known = net(x, one_hot)
        # the 2nd anchor the sharpest, far below any blur curvature: it alone
        net.psf_calibration.copy_(torch.tensor([-90.0, -30.0, -80.0, -70.0, -60.0]))
        torch.testing.assert_close(net(x), known)
        assert not torch.allclose(net(x, torch.roll(one_hot, 1, dims=1)), known)


def test_psf_calibration_orders_the_anchors_by_sharpness(real_data):
    from models.super_resolution.train import fit_psf_calibration

    net = build_network(**SMALL)
    assert float(net.psf_floor) == float("-inf")  # untrained: no floor
    medians = fit_psf_calibration(net, srdata.load_texture_stacks(real_data))
    values = [medians[f"blur_curvature_{d.label}"] for d in srdata.ANCHOR_PSFS]
    # Gaussians MTF 0.15 < 0.3 < 0.5, then bicubic, then the 4x4 box (the sharpest)
    assert values == sorted(values) and values[-1] - values[0] > 0.5
    # the floor: midway between the MTF 0.3 and MTF 0.5 anchors
    assert medians["blur_floor"] == pytest.approx((values[1] + values[2]) / 2, abs=1e-4)
    torch.testing.assert_close(net.psf_calibration, torch.tensor(values), atol=1e-4, rtol=0)
    assert float(net.psf_floor) == pytest.approx(medians["blur_floor"], abs=1e-4)


def test_psf_floor_bounds_the_estimate():
    from models.super_resolution.network import scene_blur

    net = _perturbed_network()
    x = torch.from_numpy(pack_inputs([_image(3, size=32)]))[None]
    with torch.no_grad():
        r = float(scene_blur(x[:, :4], x[:, 4:5]))
        net.psf_calibration.copy_(torch.tensor([r - 2.0, r - 1.0, r + 1.0, r + 2.0, r + 3.0]))
        net.psf_floor.fill_(float("-inf"))
        w = net.psf_weights(x)[0, :, 0, 0]
        torch.testing.assert_close(w, torch.tensor([0.0, 0.5, 0.5, 0.0, 0.0]))  # as read
        net.psf_floor.fill_(r - 1.5)  # below the reading: no effect
        torch.testing.assert_close(net.psf_weights(x)[0, :, 0, 0], w)
        net.psf_floor.fill_(r + 0.5)  # above it: the scene is restored as if it read r + 0.5
        w = net.psf_weights(x)[0, :, 0, 0]
        torch.testing.assert_close(w, torch.tensor([0.0, 0.25, 0.75, 0.0, 0.0]))


# ------------------------------------------------------------------------------ evaluation


def test_consistency_figures_of_bicubic_and_of_the_truth():
    hr = _image(2, size=64)
    box = srdata.Degradation("box")
    lr = srdata.degrade(hr, degradation=box)
    bic = srdata.bicubic(lr)
    c = sreval.consistency(bic, lr, bic, hr, box)
    assert c["hf_share"] == 0 and c["hf_error_ratio"] == pytest.approx(1.0)
    truth = sreval.consistency(hr, lr, bic, hr, box)
    assert truth["reflectance_l1"] < 1e-6 and truth["sam_deg"] < 1e-2  # box: exact block means
    assert truth["hf_error_ratio"] == 0 and 0 < truth["hf_share"] < 1


def test_protocol_comparison_shape():
    from models import metrics as M
    from models.super_resolution.network import predict_scene

    net = build_network(**SMALL).eval()
    cases = []
    for seed in (0, 1):
        hr = _image(seed, size=48)
        lr = srdata.degrade(hr, degradation=srdata.PROTOCOLS["bicubic"])
        cases.append((pack_inputs([lr]), lr, hr))
    out = sreval.compare(net, cases, srdata.PROTOCOLS["bicubic"])
    assert out["n"] == 2
    assert (
        set(out["model"]) == set(out["bicubic"]) == {"psnr", "ssim", "sam_deg", "ergas", "ndvi_mae"}
    )
    assert set(out["consistency"]["model"]) == {
        "reflectance_l1",
        "sam_deg",
        "hf_share",
        "hf_error_ratio",
    }
    assert set(out["consistency"]["bicubic"]) == {"reflectance_l1", "sam_deg"}
    # an untrained network is bicubic with its block means pinned to the input
    assert out["consistency"]["model"]["hf_share"] < 0.05
    assert out["psnr_gain_db"] == pytest.approx(
        out["model"]["psnr"] - out["bicubic"]["psnr"], abs=2e-3
    )
    gains = [
        M.psnr(predict_scene(net, x, tile=sreval.TILE, device="cpu"), hr)
        - M.psnr(srdata.bicubic(lr), hr)
        for x, lr, hr in cases
    ]
    assert out["psnr_gain_db_min"] == pytest.approx(min(gains), abs=1e-3)
    assert out["below_bicubic"] == sum(g < 0 for g in gains)


def test_every_protocol_has_every_real_source(real_data):
    net = build_network(**SMALL).eval()
    out = sreval.evaluate_super_resolution(net=net, real_data=str(real_data), threads=1, demo=False)
    assert set(sreval.PROTOCOLS) == {*srdata.PROTOCOLS, sreval.NOISY_PROTOCOL}
    for name in sreval.PROTOCOLS:
        assert set(out[name]) == {
            "real_eolearn_1date",
            "real_eolearn_multidate",
            "real_s2l1c_holdout",
            "real_s2l1c_crops",
        }
    assert out["box"]["real_s2l1c_crops"]["n"] == 30  # 4 km crops of the training regions
    assert all(v.startswith("REAL") for v in out["sources"].values())


def test_texture_holdout_is_never_a_training_region(real_data):
    tex = srdata.load_texture_stacks(real_data)
    assert tex.holdout is not None
    hy, hx = tex.holdout
    for ys, xs in tex.training_regions():
        assert not (ys.stop > hy.start - srdata.GUARD_PX and xs.stop > hx.start - srdata.GUARD_PX)
    p, m = 20, srdata.MARGIN_LR
    origins = np.array(srdata._texture_origins(tex, np.random.default_rng(0), 3000, p))
    y_end = (origins[:, 0] + p + m) * SCALE  # high-res end of each patch with its PSF margin
    x_end = (origins[:, 1] + p + m) * SCALE
    assert (origins >= m).all()
    assert not ((y_end > hy.start - srdata.GUARD_PX) & (x_end > hx.start - srdata.GUARD_PX)).any()


# ------------------------------------------------------------------------------ shipped weights


def _gain_over_bicubic(net: SuperResolutionNet, crop: np.ndarray, protocol: str) -> tuple:
    """(PSNR gain in dB, SAM gain in degrees) of the served network over bicubic on ``crop``
    degraded by ``protocol``'s PSF."""
    from models import metrics as M
    from models.super_resolution.network import predict_scene

    lr = srdata.degrade(crop, degradation=srdata.PROTOCOLS[protocol])
    pred = predict_scene(net, pack_inputs([lr]), tile=64, device="cpu")
    bic = srdata.bicubic(lr)
    return (
        M.psnr(pred, crop) - M.psnr(bic, crop),
        M.sam_degrees(bic, crop) - M.sam_degrees(pred, crop),
    )


def test_shipped_weights_not_worse_than_bicubic_under_box_psf(real_data):
    """A quality test: on a real S2 crop (eo-learn, 64 x 64 px at 10 m, never trained on) degraded
    by each protocol's PSF (the 4x4 box mean, the standard Gaussian, the bicubic kernel), the
    committed network scores at least bicubic's PSNR and SAM."""
    net = sreval.load_network()
    scenes = srdata.load_real_scenes(real_data)
    crop = next(iter(scenes.values()))[:, 16:80, 16:80]
    for name in ("box", "gauss_mtf0.3", "bicubic"):
        psnr_gain, sam_gain = _gain_over_bicubic(net, crop, name)
        assert psnr_gain >= 0 and sam_gain >= 0, name


def test_shipped_weights_do_not_over_sharpen_a_coast_that_reads_blurred(real_data):
    """A quality test on REAL content whose blur reading is far off: a 4 km crop of marsh, beach
    and sea of the real 20 m texture (a training region: what it scores is the PSF estimate, not
    the CNN) reads as blurred under every PSF. Without the estimate's floor the committed
    network restored its box-degraded input with the widest anchor and lost 6.3 dB to bicubic
    (SAM 1.15 degrees worse); with it, it scores at least bicubic's PSNR and SAM under every
    protocol."""
    net = sreval.load_network()
    crop = np.ascontiguousarray(srdata.load_texture_stacks(real_data).hr[1][:, 200:400, 600:800])
    for name in ("box", "bicubic", "gauss_mtf0.3"):
        psnr_gain, sam_gain = _gain_over_bicubic(net, crop, name)
        assert psnr_gain >= 0 and sam_gain >= 0, name
    net.psf_floor.fill_(float("-inf"))  # the reading alone
    assert _gain_over_bicubic(net, crop, "box")[0] < -3.0


def test_the_scored_weights_are_named_by_their_checksum(tmp_path):
    """An outside figure says which network it measured: the committed weights' checksum is
    the card's, and a given file's is its sidecar's."""
    import shutil

    from models import weights as wio

    path, sha = sreval.weights_identity()
    assert path == wio.weights_path(sreval.NAME)
    assert sha == wio.card_sha256(wio.read_card(sreval.NAME))
    copy = tmp_path / "sr.pt"
    shutil.copy(path, copy)
    (tmp_path / "sr.pt.sha256").write_text("ab" * 32 + "  sr.pt\n")
    assert sreval.weights_identity(copy) == (copy, "ab" * 32)
