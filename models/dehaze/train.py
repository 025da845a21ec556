"""Training of the learned dehaze model on CPU (2 threads), deterministic for a given seed.

Each batch mixes pairs of the same place at different haze (``models.dehaze.data``): clear
truth patches of the demo archive's training region and of eo-learn scenes k=3, 4 hazed on the
fly by the scattering model, and hazy archive items with the truth of their date (non-clear
pixels masked). Loss: L1 over B02-B04 + L1 over B08 + L1 over NDVI; Adam with a cosine
learning-rate decay; random flips and quarter turns. The result is saved with
``models.weights.save_model`` (weights, sha256, STAC MLM card with held-out metrics).
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from models.dehaze import data as D
from models.dehaze.network import BANDS, DEFAULT_HPARAMS, HALO, build_network
from pipelines.errors import BadInputError

__all__ = ["BatchSource", "dehaze_loss", "train_dehaze"]

#: Share of each batch taken from each source (synthetic demo, synthetic eo-learn, real pairs).
MIX = {"demo": 0.625, "eolearn": 0.125, "real": 0.25}


def ndvi_t(x: torch.Tensor) -> torch.Tensor:
    """NDVI (N, h, w) of BGRN reflectance (N, 4, h, w)."""
    red, nir = x[:, 2], x[:, 3]
    return (nir - red) / (nir + red).clamp_min(1e-3)


def dehaze_loss(
    pred: torch.Tensor, ref: torch.Tensor, mask: torch.Tensor | None = None
) -> torch.Tensor:
    """L1(RGB) + L1(NIR) + L1(NDVI) of BGRN reflectance (N, 4, h, w) over ``mask`` (N, h, w)."""
    if mask is None:
        mask = torch.ones_like(ref[:, 0])
    m = mask.to(pred.dtype)
    n = m.sum().clamp_min(1.0)
    err = (pred - ref).abs()
    rgb = (err[:, :3].mean(dim=1) * m).sum() / n
    nir = (err[:, 3] * m).sum() / n
    nd = ((ndvi_t(pred) - ndvi_t(ref)).abs() * m).sum() / n
    return rgb + nir + nd


def _augment(rng: np.random.Generator, *arrays: np.ndarray) -> list[np.ndarray]:
    """The same random flip / quarter turn of each (..., y, x) array."""
    k = int(rng.integers(4))
    flip = bool(rng.integers(2))
    out = []
    for a in arrays:
        a = np.rot90(a, k, axes=(-2, -1))
        out.append(np.ascontiguousarray(a[..., ::-1] if flip else a))
    return out


class BatchSource:
    """Batches of (hazy, clear, mask) float32 tensors (N, 4, p, p), (N, 4, p, p), (N, p, p)."""

    def __init__(
        self,
        demo: np.ndarray,
        eolearn: np.ndarray,
        real: D.RealPairs | None,
        *,
        patch: int,
        batch_size: int,
        seed: int,
    ) -> None:
        self.demo, self.eolearn, self.real = demo, eolearn, real
        self.patch, self.batch_size = patch, batch_size
        self.rng = np.random.default_rng(seed)
        counts = {k: round(v * batch_size) for k, v in MIX.items()}
        if real is None:
            counts["demo"] += counts.pop("real")
        counts["demo"] += batch_size - sum(counts.values())
        self.counts = counts

    def _crop(self, *arrays: np.ndarray) -> list[np.ndarray]:
        h, w = arrays[0].shape[-2:]
        p = self.patch
        r = int(self.rng.integers(0, h - p + 1))
        c = int(self.rng.integers(0, w - p + 1))
        return _augment(self.rng, *(a[..., r : r + p, c : c + p] for a in arrays))

    def _synthetic(self, clear: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        (j,) = self._crop(clear)
        level = (0.0, 0.05) if self.rng.random() < 0.1 else (0.0, 1.3)
        hazy, _ = D.synthesize(j, BANDS, self.rng, level_range=level)
        return hazy, j.astype("float32"), np.ones(j.shape[1:], bool)

    def batch(self) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        items = []
        for _ in range(self.counts["demo"]):
            j = self.demo[int(self.rng.integers(len(self.demo)))].astype("float32") / 1e4
            items.append(self._synthetic(j))
        for _ in range(self.counts["eolearn"]):
            items.append(self._synthetic(self.eolearn[int(self.rng.integers(len(self.eolearn)))]))
        for _ in range(self.counts.get("real", 0)):
            assert self.real is not None
            i = int(self.rng.integers(len(self.real.hazy)))
            hz, cl, m = self._crop(self.real.hazy[i], self.real.clear[i], self.real.mask[i])
            items.append((hz, cl, m))
        hazy, clear, mask = (np.stack(x) for x in zip(*items, strict=True))
        return torch.from_numpy(hazy), torch.from_numpy(clear), torch.from_numpy(mask)


def _learning_rate(frac: float, peak: float, warmup: float = 0.03) -> float:
    """Linear warm-up over ``warmup`` of the run, then cosine decay to 1 % of ``peak``."""
    if frac < warmup:
        return peak * (0.1 + 0.9 * frac / warmup)
    x = (frac - warmup) / (1.0 - warmup)
    return peak * (0.01 + 0.99 * 0.5 * (1.0 + np.cos(np.pi * min(x, 1.0))))


def train_dehaze(
    out_name: str = "dehaze",
    seed: int = 0,
    minutes: float | None = None,
    steps: int = 800,
    batch_size: int = 16,
    patch: int = 64,
    lr: float = 2e-3,
    archive: str | None = None,
    real_dir: str | None = None,
    demo_per_date: int = 16,
    real_per_item: int = 16,
    evaluate: bool = True,
    save: bool = True,
    threads: int = 2,
) -> dict[str, Any]:
    """Train the dehaze CNN and save it as ``out_name``; returns the card's training and metrics.

    ``steps`` Adam steps of ``batch_size`` patches of ``patch`` px, learning rate warm-up then
    cosine decay over the run (bit-for-bit repeatable for ``seed``). ``minutes`` time-boxes the
    run instead (data preparation included): the schedule then follows the elapsed share of
    that time whenever it is ahead of the step share, and training stops when the time is up
    (repeatable only up to the number of steps the machine managed). ``archive``: demo
    archive root (default: the embedded one);
    ``real_dir``: shared real-data folder; ``demo_per_date``/``real_per_item``: clear truth
    patches per archive date and patches per hazy item in the pools; ``evaluate``: score the
    held-out pairs and record them in the card; ``save``: write weights and card.
    """
    from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn

    from models.dehaze.evaluate import evaluate_pairs, summarise
    from pipelines.demo import demo_archive_url

    for name, value in (("steps", steps), ("batch_size", batch_size), ("threads", threads)):
        if value < 1:
            raise BadInputError(name, value, "a positive integer")
    if not 2 * HALO <= patch <= 96:
        raise BadInputError("patch", patch, f"a patch size of {2 * HALO}..96 px")
    if minutes is not None and minutes <= 0:
        raise BadInputError("minutes", minutes, "a positive number of minutes, or None")
    archive = archive or demo_archive_url()
    real = Path(real_dir) if real_dir else D.real_data_dir()
    torch.set_num_threads(threads)
    torch.manual_seed(seed)
    start = time.monotonic()

    pool_size = 96
    demo = D.archive_clear_patches(archive, size=pool_size, per_date=demo_per_date, seed=seed)
    eolearn = D.eolearn_scenes(real, D.EOLEARN_TRAIN_SCENES)
    pairs = D.archive_hazy_pairs(archive, size=pool_size, per_item=real_per_item, seed=seed)
    source = BatchSource(demo, eolearn, pairs, patch=patch, batch_size=batch_size, seed=seed)
    data_seconds = time.monotonic() - start

    net = build_network(**DEFAULT_HPARAMS)
    opt = torch.optim.Adam(net.parameters(), lr=lr)
    budget = None if minutes is None else max(60.0 * minutes - data_seconds, 1.0)
    net.train()
    losses: list[float] = []
    done = 0
    columns = (TextColumn("dehaze"), BarColumn(), TextColumn("{task.fields[loss]}"))
    with Progress(*columns, TimeElapsedColumn()) as progress:
        task = progress.add_task("train", total=steps, loss="")
        t0 = time.monotonic()
        for step in range(steps):
            frac = step / steps
            if budget is not None:
                frac = max(frac, (time.monotonic() - t0) / budget)
                if frac >= 1.0:
                    break
            for group in opt.param_groups:
                group["lr"] = _learning_rate(frac, lr)
            hazy, clear, mask = source.batch()
            loss = dehaze_loss(net(hazy), clear, mask)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            losses.append(float(loss.detach()))
            done = step + 1
            if done % 25 == 0:
                mean = f"loss {np.mean(losses[-25:]):.4f}"
                progress.update(task, completed=done, loss=mean)
                progress.console.log(f"step {done} {mean} {time.monotonic() - t0:.0f} s")
    train_seconds = time.monotonic() - start
    net.eval()

    metrics: dict[str, Any] = {}
    if evaluate:
        synth = evaluate_pairs(D.held_out_synthetic_pairs(archive, real), net)
        archive_rows = evaluate_pairs(D.held_out_archive_pairs(archive), net)
        metrics = {
            "held_out_synthetic": summarise(synth),
            "held_out_demo_archive": summarise(archive_rows),
        }
    n_params = int(sum(p.numel() for p in net.parameters()))
    training = {
        "data": (
            "Pairs of the same place at different haze. (a) Synthetic: I = J t + A (1 - t) with "
            "t_b = exp(-d (lambda_b/550nm)^-alpha), alpha U(0.5, 1.5), d = level * exp(v field) "
            "(level U(0, 1.3), 10 % U(0, 0.05); v U(0, 0.5); smooth field 64-512 px), A per band "
            "a0 (lambda/550)^-g (a0 U(0.18, 0.38), g U(0, 0.6), +-3 %), noise sd U(0, 0.003); "
            f"J from {len(demo)} truth patches ({pool_size} px) of the demo archive "
            "(truth/s2.zarr clear reflectance, all dates) and eo-learn REFERENCE_SCENES k=3, 4. "
            f"(b) Real: {len(pairs.hazy)} patches of {len(set(pairs.item_ids))} hazy demo S2 "
            "items (clear-pixel depth >= 0.1) with the truth of the same date, non-clear pixels "
            "masked. Batch mix demo/eo-learn/real = "
            + "/".join(str(source.counts.get(k, 0)) for k in MIX)
            + "."
        ),
        "held_out": (
            "Bottom-right quarter of the demo province (rows and columns >= half the grid; "
            f"training patches keep {HALO} px away) and eo-learn scene k=2 (2015-09-09)."
        ),
        "loss": "L1(B02-B04) + L1(B08) + L1(NDVI)",
        "optimizer": f"Adam, lr {lr} warm-up + cosine decay, at most {steps} steps"
        + (f" within {minutes} min" if minutes is not None else ""),
        "samples": done * batch_size,
        "steps": done,
        "batch_size": batch_size,
        "patch_px": patch,
        "epochs": round(done * batch_size / (len(demo) + len(eolearn) + len(pairs.hazy)), 2),
        "seed": seed,
        "threads": threads,
        "seconds": round(train_seconds, 1),
        "data_seconds": round(data_seconds, 1),
        "final_loss": round(float(np.mean(losses[-100:])), 5),
        "command": (
            f"terrapipe train dehaze --seed {seed} --steps {steps}"
            + (f" --minutes {minutes}" if minutes is not None else "")
        ),
    }
    card = {
        "mlm:name": out_name,
        "mlm:architecture": "residual dilated CNN (gain/offset correction of BGRN)",
        "mlm:tasks": ["image-restoration"],
        "mlm:framework": "pytorch",
        "mlm:total_parameters": n_params,
        "mlm:pretrained": False,
        "mlm:batch_size_suggestion": 8,
        "mlm:hyperparameters": {
            "width": DEFAULT_HPARAMS["width"],
            "dilations": list(DEFAULT_HPARAMS["dilations"]),
        },
        "terrapipe:halo": HALO,
        "mlm:input": [
            {
                "name": "BGRN reflectance",
                "bands": list(BANDS),
                "input": {
                    "shape": [-1, len(BANDS), -1, -1],
                    "dim_order": ["batch", "bands", "height", "width"],
                    "data_type": "float32",
                },
                "value_scaling": None,
                "pre_processing_function": None,
                "description": (
                    "Sentinel-2 L2A surface reflectance 0-1 (DN/10000 after the offset), "
                    "NaN-free (nodata filled with 0); any size, 10 m pixels."
                ),
            }
        ],
        "mlm:output": [
            {
                "name": "haze-free BGRN reflectance",
                "tasks": ["image-restoration"],
                "result": {
                    "shape": [-1, len(BANDS), -1, -1],
                    "dim_order": ["batch", "bands", "height", "width"],
                    "data_type": "float32",
                },
                "bands": list(BANDS),
                "post_processing_function": None,
            }
        ],
        "training": training,
        "metrics": metrics,
    }
    if save:
        from models.weights import save_model

        save_model(out_name, net, card)
    return {"training": training, "metrics": metrics, "parameters": n_params}
