"""The 4x super-resolution model: degradation, input packing, network contract, training step."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from models.super_resolution import data as srdata
from models.super_resolution.network import (
    C_IN,
    DATE_CHANNELS,
    HALO,
    SAR_OFFSET,
    SCALE,
    build_network,
    pack_inputs,
    spectrally_neutral,
)
from models.super_resolution.train import fit_linear_path, sr_loss, train_steps
from pipelines.errors import BadInputError

SMALL = {"features": 8, "date_features": 4, "sar_features": 4, "blocks": 2}


pytestmark = pytest.mark.usefixtures("one_torch_thread")


def _dates(n: int, h: int = 12, w: int = 12, seed: int = 0) -> list[np.ndarray]:
    rng = np.random.default_rng(seed)
    return [rng.uniform(0.02, 0.4, (4, h, w)).astype(np.float32) for _ in range(n)]


NO_NOISE = torch.zeros(1, 1, 1, 1)
"""A scene without noise: the restoration is kept wherever the input has detail, and every block
averages exactly to its target (with noise, blocks of noise fall back to bicubic:
``test_super_resolution_noise.py``)."""


def _sar(h: int = 12, w: int = 12) -> np.ndarray:
    return np.random.default_rng(1).uniform(-25, -5, (2, h, w)).astype(np.float32)


# ------------------------------------------------------------------------------ degradation


def test_degrade_shapes_and_constant():
    hr = np.full((3, 4, 32, 48), 0.25, np.float32)
    lr = srdata.degrade(hr)
    assert lr.shape == (3, 4, 8, 12)
    np.testing.assert_allclose(lr, 0.25, atol=1e-6)


def test_degrade_keeps_block_means_of_smooth_images():
    yy, xx = np.mgrid[0:64, 0:64].astype(np.float32)
    hr = 0.1 + 0.1 * np.sin(xx / 20.0) * np.cos(yy / 24.0)
    lr = srdata.degrade(hr)
    block = hr.reshape(16, 4, 16, 4).mean(axis=(1, 3))
    inner = (slice(2, -2), slice(2, -2))
    np.testing.assert_allclose(lr[inner], block[inner], atol=1e-3)
    assert abs(lr.mean() - hr.mean()) < 1e-3


def test_degradation_mtf_at_nyquist():
    k = srdata.degradation_kernel()
    assert k.shape == (srdata.KERNEL_TAPS,) and abs(k.sum() - 1) < 1e-12
    f = 1.0 / (2 * SCALE)
    gain = abs(np.sum(k * np.exp(-2j * np.pi * f * np.arange(k.size))))
    assert gain == pytest.approx(srdata.MTF_AT_NYQUIST, abs=0.01)


def test_degrade_rejects_sizes_not_multiple_of_scale():
    with pytest.raises(BadInputError, match="multiples of 4"):
        srdata.degrade(np.zeros((4, 30, 32), np.float32))


def test_degrade_with_nodata_marks_touched_pixels():
    hr = np.full((2, 32, 32), -12.0, np.float32)
    hr[:, 0, 0] = np.nan
    lr = srdata.degrade_with_nodata(hr)
    assert np.isnan(lr[:, 0, 0]).all()
    assert np.isfinite(lr[:, 4:, 4:]).all()
    np.testing.assert_allclose(lr[:, 4:, 4:], -12.0, atol=1e-5)


# ------------------------------------------------------------------------------ pack_inputs


def test_pack_inputs_layout():
    dates = _dates(2)
    dates[1][:, 0, 0] = np.nan
    sar = _sar()
    x = pack_inputs(dates, sar)
    assert x.shape == (C_IN, 12, 12) and x.dtype == np.float32
    np.testing.assert_array_equal(x[0:4], dates[0])
    assert (x[4] == 1).all()
    assert x[DATE_CHANNELS + 4, 0, 0] == 0 and x[DATE_CHANNELS : DATE_CHANNELS + 4, 0, 0].sum() == 0
    assert x[DATE_CHANNELS + 4].sum() == 12 * 12 - 1
    assert (x[2 * DATE_CHANNELS : SAR_OFFSET] == 0).all()
    np.testing.assert_allclose(x[SAR_OFFSET : SAR_OFFSET + 2], (sar + 30) / 30, rtol=1e-6)
    assert (x[SAR_OFFSET + 2] == 1).all()
    assert (pack_inputs(dates[:1])[SAR_OFFSET:] == 0).all()


@pytest.mark.parametrize(
    ("dates", "sar", "field"),
    [
        ([np.zeros((3, 8, 8), np.float32)], None, "dates\\[0\\]"),
        ([np.zeros((4, 8, 8), np.uint16)], None, "dtype"),
        ([np.zeros((4, 8, 8), np.float32), np.zeros((4, 8, 9), np.float32)], None, "dates\\[1\\]"),
        ([np.zeros((4, 8, 8), np.float32)] * 5, None, "dates"),
        ([], None, "dates"),
        ([np.full((4, 8, 8), 1200.0, np.float32)], None, "reflectance 0-1"),
        ([np.zeros((4, 8, 8), np.float32)], np.zeros((2, 8, 9), np.float32), "sar"),
        ([np.zeros((4, 8, 8), np.float32)], np.zeros((3, 8, 8), np.float32), "sar"),
        ([np.zeros((4, 8, 8), np.float32)], np.zeros((2, 8, 8), np.int16), "sar dtype"),
    ],
)
def test_pack_inputs_errors(dates, sar, field):
    with pytest.raises(BadInputError, match=field):
        pack_inputs(dates, sar)


# ------------------------------------------------------------------------------ network


@pytest.mark.parametrize("n_dates", [1, 2, 3, 4])
@pytest.mark.parametrize("with_sar", [False, True])
def test_network_shapes_and_block_means(n_dates, with_sar):
    torch.manual_seed(0)
    net = build_network(**SMALL).eval()  # as built: the block targets are the input itself
    x = pack_inputs(_dates(n_dates, 10, 14), _sar(10, 14) if with_sar else None)
    with torch.no_grad():
        out = net(torch.from_numpy(x)[None], noise_energy=NO_NOISE)
    assert out.shape == (1, 4, 40, 56)
    assert torch.isfinite(out).all()
    _assert_block_means(out, x[:4])


def _trained_like(**hp) -> torch.nn.Module:
    """A small network with non-zero head, linear path and block kernel (as after training)."""
    torch.manual_seed(0)
    net = build_network(**{**SMALL, **hp}).eval()
    with torch.no_grad():
        for p in net.parameters():
            if not p.any():
                p.normal_(0.0, 0.01)
    return net


def _block_means(out: torch.Tensor) -> np.ndarray:
    c, hh, ww = out.shape[1:]
    return out[0].reshape(c, hh // 4, 4, ww // 4, 4).mean(dim=(2, 4)).numpy()


def _assert_block_means(out: torch.Tensor, target: np.ndarray) -> None:
    """Every 4x4 block the clip at 0 left alone averages to ``target`` (most blocks do)."""
    assert (out >= 0).all()
    unclipped = _block_means((out > 0).float()) == 1
    assert unclipped.mean() > 0.8
    np.testing.assert_allclose(_block_means(out)[unclipped], target[unclipped], atol=1e-5)


def test_block_means_equal_the_block_targets():
    net = _trained_like()
    x = pack_inputs(_dates(2, 10, 14), _sar(10, 14))
    with torch.no_grad():
        xt = torch.from_numpy(x)[None]
        out = net(xt, noise_energy=NO_NOISE)
        target = net.block_targets(xt[:, :4], net.psf_weights(xt))[0].numpy()
    _assert_block_means(out, target)
    assert np.abs(target - x[:4]).max() > 1e-3  # the filter is active on a textured input


def test_exact_block_means_without_block_kernel():
    net = _trained_like(block_kernel=0)
    x = pack_inputs(_dates(2, 10, 14), _sar(10, 14))
    with torch.no_grad():
        out = net(torch.from_numpy(x)[None], noise_energy=NO_NOISE)
    _assert_block_means(out, x[:4])


def test_colour_kept_on_flat_areas_and_ramps():
    net = _trained_like()
    yy, xx = np.mgrid[0:16, 0:20].astype(np.float32)
    ramp = np.stack([0.05 + 0.002 * (yy + 2 * xx) * (b + 1) for b in range(4)])
    flat = np.broadcast_to(np.array([0.04, 0.07, 0.05, 0.3], np.float32)[:, None, None], ramp.shape)
    for img in (ramp, np.ascontiguousarray(flat)):
        x = pack_inputs([img])
        with torch.no_grad():
            out = net(torch.from_numpy(x)[None])
        inner = (slice(None), slice(2, -2), slice(2, -2))
        np.testing.assert_allclose(_block_means(out)[inner], img[inner], atol=1e-5)


def test_spectrally_neutral_residual_keeps_each_pixels_direction():
    rng = np.random.default_rng(3)
    base = torch.from_numpy(rng.uniform(0.02, 0.4, (2, 4, 8, 8)).astype(np.float32))
    residual = torch.from_numpy(rng.normal(0.0, 0.02, (2, 4, 8, 8)).astype(np.float32))
    out = base + spectrally_neutral(residual, base)
    scale = out / base  # one factor per pixel, the same for every band
    np.testing.assert_allclose(scale.numpy(), scale[:, :1].expand_as(scale).numpy(), rtol=1e-5)
    # the kept part is the least-squares projection: what is left is orthogonal to the base
    left = residual - spectrally_neutral(residual, base)
    np.testing.assert_allclose((left * base).sum(dim=1).numpy(), 0.0, atol=1e-7)
    assert spectrally_neutral(residual, torch.zeros_like(base)).abs().max() == 0.0


@pytest.mark.parametrize("neutral", [1, 0])
def test_grey_input_keeps_its_spectrum_only_with_the_neutral_residual(neutral):
    """Bands proportional to one image (one spectrum everywhere): with the spectrally neutral
    residual every output pixel keeps that spectrum (bicubic, the PSF-mixed linear path and
    the block targets act on each band alike); a free per-band residual tilts it."""
    net = _trained_like(neutral_residual=neutral).double()  # float64: no rounding in the angle
    spectrum = np.array([0.25, 0.5, 0.125, 1.0], np.float32)  # powers of 2: exact products
    img = _dates(1, 12, 12)[0][0]
    x = pack_inputs([spectrum[:, None, None] * img[None]])
    with torch.no_grad():
        out = net(torch.from_numpy(x).double()[None])[0].numpy()
    norm = np.maximum(np.linalg.norm(out, axis=0), 1e-30) * np.linalg.norm(spectrum)
    cos = (out * spectrum[:, None, None]).sum(0) / norm
    angle = np.degrees(np.arccos(np.clip(cos, -1.0, 1.0)))
    unclipped = (out > 0).all(axis=0)  # the clip at 0 reflectance may zero a pixel
    assert unclipped.mean() > 0.8
    angle = angle[unclipped]
    if neutral:
        assert angle.max() < 1e-4
    else:
        assert angle.max() > 0.1


def test_network_uses_other_dates_and_sar():
    net = _trained_like()
    dates = _dates(3)
    with torch.no_grad():
        one = net(torch.from_numpy(pack_inputs(dates[:1]))[None])
        three = net(torch.from_numpy(pack_inputs(dates))[None])
        sar = net(torch.from_numpy(pack_inputs(dates[:1], _sar()))[None])
    assert not torch.allclose(one, three)
    assert not torch.allclose(one, sar)


def test_network_is_deterministic():
    x = torch.from_numpy(pack_inputs(_dates(2), _sar()))[None]
    outs = []
    for _ in range(2):
        torch.manual_seed(3)
        net = build_network(**SMALL).eval()
        with torch.no_grad():
            outs.append(net(x))
    torch.testing.assert_close(outs[0], outs[1], rtol=0, atol=0)


def test_network_is_local_within_halo():
    net = _trained_like(**{k: v for k, v in build_network().hparams.items()})
    assert net.receptive_radius <= HALO <= 16
    size = 2 * HALO + 8
    x = torch.from_numpy(pack_inputs(_dates(2, size, size), _sar(size, size)))[None]
    far = x.clone()
    far[:, :, :, -1] += 0.05  # change the last input column only
    psf = torch.softmax(torch.arange(5.0), dim=0).view(1, 5, 1, 1)  # the scene's, given
    with torch.no_grad():
        a, b = net(x, psf), net(far, psf)
    # block means are pinned to each input pixel, so only the first columns are compared
    reach = (size - 1 - net.receptive_radius - 1) * SCALE
    torch.testing.assert_close(a[..., :reach], b[..., :reach], rtol=0, atol=1e-6)
    assert not torch.allclose(a, b)


def test_tiled_prediction_equals_whole_image():
    """The PSF is estimated once on the whole plane and given to every tile: the tiles stitch
    into the whole-scene result (the per-tile estimate would not)."""
    from models.super_resolution.network import predict_scene
    from models.tiling import predict_tiled

    net = _trained_like()
    with torch.no_grad():  # anchors apart, spanning the white (sharp) and the smooth half
        net.psf_calibration.copy_(torch.tensor([-1.0, -0.5, 0.0, 0.8, 1.6]))
    dates = _dates(2, 64, 60)
    dates[0][:, :, 30:] = srdata.bicubic(dates[0][:, ::4, 30::4])[:, :64, :30]  # smooth half
    x = pack_inputs(dates, _sar(64, 60))
    with torch.no_grad():
        whole = net(torch.from_numpy(x)[None])[0].numpy()
    tiled = predict_scene(net, x, tile=24, blend=8, device="cpu")
    np.testing.assert_allclose(tiled, whole, atol=1e-5)
    per_tile = predict_tiled(net, x, scale=SCALE, halo=HALO, tile=24, blend=8, device="cpu")
    assert np.abs(per_tile - whole).max() > 1e-3


def test_build_network_rejects_unknown_hparams():
    with pytest.raises(BadInputError, match="hparams"):
        build_network(width=3)


# ------------------------------------------------------------------------------ training


def _tiny_stacks() -> srdata.DemoStacks:
    rng = np.random.default_rng(0)
    g, d, h, w = 1, 4, 160, 160
    yy, xx = np.mgrid[0:h, 0:w]
    parcels = ((yy // 12 + xx // 16) % 3).astype(np.float32)
    hr = np.stack(
        [[(0.05 + 0.05 * b + 0.04 * (parcels + t % 2)) for b in range(4)] for t in range(d)]
    )[None]
    hr = (hr * 10000).astype(np.uint16)
    lr = srdata.degrade(hr.astype(np.float32) / 10000)
    return srdata.DemoStacks(
        hr=hr,
        lr=lr,
        valid=rng.random((g, d, h // 4, w // 4)) > 0.2,
        sar=rng.uniform(-20, -5, (g, d, 2, h // 4, w // 4)).astype(np.float32),
        dates=[["2025-01-01"] * d],
        holdout=srdata.holdout_block(h, w),
    )


def test_training_patches_avoid_the_holdout_block():
    stacks = _tiny_stacks()
    stacks.hr = np.zeros((1, 4, 4, 512, 512), np.uint16)
    stacks.lr = np.zeros((1, 4, 4, 128, 128), np.float32)
    stacks.holdout = srdata.holdout_block(512, 512)
    origins = srdata._patch_origins(stacks, np.random.default_rng(0), 500, 16)
    guard = (384 - srdata.GUARD_PX) // SCALE
    assert not ((origins[:, 0] + 16 > guard) & (origins[:, 1] + 16 > guard)).any()


def test_patches_that_cannot_avoid_the_holdout_are_refused():
    stacks = _tiny_stacks()
    with pytest.raises(BadInputError, match="patch_lr"):
        srdata.sample_batch(stacks, np.random.default_rng(0), 2, 30)


def test_sample_batch_shapes():
    x, y = srdata.sample_batch(_tiny_stacks(), np.random.default_rng(0), 3, 8)
    assert x.shape == (3, C_IN, 8, 8) and y.shape == (3, 4, 32, 32)
    assert x.dtype == np.float32 and y.dtype == np.float32
    assert (x[:, 4] == 1).all()  # the reference date is always valid


def test_training_steps_lower_the_loss():
    torch.manual_seed(0)
    net = build_network(**SMALL)
    stacks = _tiny_stacks()
    x, y = srdata.sample_batch(stacks, np.random.default_rng(0), 4, 8)
    with torch.no_grad():
        before = float(sr_loss(net(torch.from_numpy(x)), torch.from_numpy(y)))
    hist = train_steps(net, lambda: (x, y), steps=20, lr=2e-3, progress=False)
    with torch.no_grad():
        after = float(sr_loss(net(torch.from_numpy(x)), torch.from_numpy(y)))
    assert hist["steps"] == 20
    assert after < before


def _smooth_texture(seed: int = 0, size: int = 96) -> srdata.TextureStacks:
    """Two random images with 1/f-like texture (blurred noise at several scales), (2, 4, H, W)."""
    rng = np.random.default_rng(seed)
    img = np.zeros((2, 4, size, size), np.float32)
    for cells in (4, 8, 16, 32):
        noise = rng.normal(0, 0.02, (2, 1, cells, cells)).astype(np.float32)
        up = torch.nn.functional.interpolate(torch.from_numpy(noise), size=size, mode="bicubic")
        img += up.numpy() * np.array([0.5, 0.8, 1.0, 2.0], np.float32)[None, :, None, None]
    hr = np.clip(img + np.array([0.05, 0.08, 0.07, 0.3], np.float32)[None, :, None, None], 0, 1)
    return srdata.TextureStacks(hr=hr, lr=srdata.degrade(hr), source="synthetic 1/f")


def test_linear_path_fit_beats_bicubic_and_keeps_flat_borders():
    tex = _smooth_texture()
    # one anchor PSF, head at zero: the output is the linear path alone
    net = build_network(**SMALL, psf_anchors=1).eval()
    fit = fit_linear_path(net, tex, (srdata.PROTOCOLS["gauss_mtf0.3"],))
    assert (
        fit["texture_rmse_linear_gauss_mtf0.30"] < 0.9 * fit["texture_rmse_bicubic_gauss_mtf0.30"]
    )
    with torch.no_grad():
        out = net(torch.from_numpy(pack_inputs([tex.lr[0]]))[None])[0].numpy()

    def rmse(img: np.ndarray) -> float:
        return float(np.sqrt(np.mean((img - tex.hr[0]) ** 2)))

    assert rmse(out) < rmse(srdata.bicubic(tex.lr[0]))
    # edges repeat at the border: a flat scene stays flat up to the last pixel (no ringing frame)
    flat = np.broadcast_to(np.array([0.04, 0.07, 0.05, 0.3], np.float32)[:, None, None], (4, 9, 11))
    with torch.no_grad():
        out = net(torch.from_numpy(pack_inputs([np.ascontiguousarray(flat)]))[None])[0].numpy()
    np.testing.assert_allclose(out, np.repeat(np.repeat(flat, 4, 1), 4, 2), atol=1e-6)


def test_real_scenes_load(real_data):
    scenes = srdata.load_real_scenes(real_data)
    assert len(scenes) == 3
    for img in scenes.values():
        assert img.shape == (4, 100, 100) and 0 < img.mean() < 0.5


def test_texture_batch_shapes_single_date_no_sar():
    hr = np.random.default_rng(0).uniform(0.01, 0.4, (2, 4, 96, 96)).astype(np.float32)
    tex = srdata.TextureStacks(hr=hr, lr=srdata.degrade(hr), source="random")
    x, y = srdata.sample_texture_batch(tex, np.random.default_rng(0), 3, 8)
    assert x.shape == (3, C_IN, 8, 8) and y.shape == (3, 4, 32, 32)
    assert (x[:, 4] == 1).all() and (x[:, 5:] == 0).all()  # date 0 only, no SAR
    x, y = srdata.sample_texture_batch(tex, np.random.default_rng(0), 3, 8, degradations=False)
    # inputs and targets are the same image: degrading the target gives the input (interior)
    np.testing.assert_allclose(srdata.degrade(y)[:, :, 2:-2, 2:-2], x[:, :4, 2:-2, 2:-2], atol=1e-6)


def test_texture_images_load(real_data):
    tex = srdata.load_texture_stacks(real_data)
    assert tex.hr.shape[:2] == (len(srdata.TEXTURE_BANDS), 4)
    assert tex.lr.shape[-2:] == (tex.hr.shape[-2] // 4, tex.hr.shape[-1] // 4)
    assert 0 < float(tex.hr.mean()) < 0.5


def test_training_command_is_the_cli_for_cli_options():
    from models.super_resolution.train import TEXTURE_FRACTION, _command

    base = dict(minutes=None, archive=None, batch_size=12, patch=20, lr=3e-3, n_groups=8)
    base |= dict(texture_fraction=TEXTURE_FRACTION, threads=1)
    cli = "terrapipe train super_resolution --steps 10 --seed 1"
    assert _command(steps=10, seed=1, **base) == cli
    assert "batch_size=4" in _command(steps=10, seed=1, **{**base, "batch_size": 4})
    assert "texture_fraction=0.5" in _command(steps=10, seed=1, **{**base, "texture_fraction": 0.5})
