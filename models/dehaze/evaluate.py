"""Held-out quality of the learned dehaze model against the hazy input and the classical dehaze.

``evaluate_dehaze(archive)`` scores three restorations of every held-out pair (the hazy input
itself, ``pipelines.stages.dehaze.dehaze`` after ``cloud_mask`` and ``haze_index``, and the
CNN run through ``models.tiling.predict_tiled`` as the ``dehaze_learned`` stage runs it) on
B02, B03, B04, B08 against the clear reflectance: PSNR (dB), SSIM, SAM (degrees), ERGAS and
NDVI MAE, averaged over the pairs. The pairs (``models.dehaze.data``): synthetic haze over the
held-out block of the demo province and eo-learn scene k=2, and the archive's own hazy items
over the held-out block paired with the truth of the same date (scored on truth-clear pixels).
With the real data, ``haze_invariance`` restores the held-out eo-learn scene with and without
synthetic haze and reports how much closer the two restorations are than the two inputs (REAL),
and ``real_hazy_scene`` restores the eo-learn scene under real haze and scores it against the
clear dates of the same place (REAL).
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from models import metrics as M
from models.dehaze import data as D
from models.dehaze.network import BANDS, HALO

if TYPE_CHECKING:
    import xarray as xr

__all__ = [
    "METHODS",
    "classical_dehaze",
    "evaluate_dehaze",
    "evaluate_pairs",
    "haze_invariance",
    "learned_dehaze",
    "load_network",
    "real_hazy_scene",
    "score",
    "summarise",
]

METHODS = ("hazy", "classical", "learned")


def _as_dataarray(pair: D.EvalPair) -> xr.DataArray:
    """(time=1, band, y, x) reflectance DataArray of a pair's hazy image on a 10 m grid."""
    import xarray as xr

    bands = list(pair.bands)
    data = pair.hazy
    if pair.scl is not None:
        bands.append("SCL")
        data = np.concatenate([data, pair.scl[None]])
    h, w = data.shape[1:]
    return xr.DataArray(
        data[None].astype("float32"),
        dims=("time", "band", "y", "x"),
        coords={
            "time": [np.datetime64("2025-01-01")],
            "band": bands,
            "y": 1000.0 * 1e3 - 10.0 * np.arange(h) - 5.0,
            "x": 300.0 * 1e3 + 10.0 * np.arange(w) + 5.0,
        },
        attrs={"crs": "EPSG:32650"},
    )


def classical_dehaze(pair: D.EvalPair) -> np.ndarray:
    """``cloud_mask`` -> ``haze_index`` -> ``dehaze`` on a pair's hazy image: (4, y, x) BGRN."""
    import dask

    from pipelines.stages.cloud_mask import cloud_mask
    from pipelines.stages.dehaze import dehaze
    from pipelines.stages.haze import haze_index

    s2 = _as_dataarray(pair)
    mask = cloud_mask(s2)
    out = dehaze(s2, haze_index(s2, mask))
    with dask.config.set(scheduler="threads", num_workers=2):
        return out.isel(time=0).sel(band=list(BANDS)).values.astype("float32")


def learned_dehaze(net: torch.nn.Module, hazy: np.ndarray, device: Any = None) -> np.ndarray:
    """The CNN on (4, y, x) BGRN reflectance as the stage runs it (NaN -> 0 in, NaN kept)."""
    from models.tiling import predict_tiled

    valid = np.isfinite(hazy).all(0)
    x = np.where(valid, hazy, 0.0).astype("float32")
    pred = predict_tiled(net, x, halo=HALO, device=device)
    return np.where(valid, np.maximum(pred, 0.0), np.nan).astype("float32")


def score(pred: np.ndarray, ref: np.ndarray, mask: np.ndarray) -> dict[str, float]:
    """All metrics of ``pred`` vs ``ref`` (4, y, x) BGRN over ``mask`` (y, x)."""
    return {
        "psnr": M.psnr(pred, ref, mask=mask),
        "ssim": M.ssim(pred, ref, mask=mask),
        "sam_deg": M.sam_degrees(pred, ref, mask=mask),
        "ergas": M.ergas(pred, ref, 1, mask=mask),
        "ndvi_mae": M.ndvi_mae(pred, ref, mask=mask),
    }


def evaluate_pairs(
    pairs: list[D.EvalPair], net: torch.nn.Module, *, classical: bool = True, device: Any = None
) -> list[dict[str, Any]]:
    """Per pair: name, depth and the metrics of each method (``METHODS``)."""
    rows = []
    for pair in pairs:
        ref = pair.clear[:4]
        hazy = pair.hazy[:4]
        outs = {"hazy": hazy, "learned": learned_dehaze(net, hazy, device)}
        if classical:
            outs["classical"] = classical_dehaze(pair)
        row: dict[str, Any] = {"name": pair.name, "depth": round(float(pair.depth), 4)}
        for method, pred in outs.items():
            row[method] = score(pred, ref, pair.mask)
        rows.append(row)
    return rows


def summarise(rows: list[dict[str, Any]]) -> dict[str, Any]:
    """Mean of every metric per method over ``rows`` (rounded), and the pair count."""
    out: dict[str, Any] = {"pairs": len(rows)}
    for method in METHODS:
        if not rows or method not in rows[0]:
            continue
        for key in rows[0][method]:
            vals = [r[method][key] for r in rows if np.isfinite(r[method][key])]
            out[f"{method}_{key}"] = round(float(np.mean(vals)), 4) if vals else None
    return out


INVARIANCE_SEED = 20261
"""Seed of the haze drawn over the eo-learn scenes by :func:`haze_invariance`."""


def haze_invariance(
    net: torch.nn.Module,
    real_dir: str | Path,
    *,
    scenes: tuple[int, ...] = D.EOLEARN_TEST_SCENES,
    device: Any = None,
) -> dict[str, Any]:
    """REAL: does the learned dehaze give the same image with and without haze?

    Each held-out eo-learn scene (``scenes``; never trained on) is hazed by the physical model of
    :func:`models.dehaze.data.synthesize` at every depth of ``EVAL_LEVELS`` (seeded), and the
    network restores both the hazy and the clear scene. Per depth: PSNR (dB, BGRN) of the hazy
    scene against the clear one (``hazy_vs_clear``), of the two restorations against each other
    (``dehazed_hazy_vs_dehazed_clear``) and their difference (``invariance_gain_db``: how much
    closer the restorations are than the inputs; > 0 is haze-invariant); and once per scene the
    restoration of the clear scene against itself (``dehazed_clear_vs_clear``: what the network
    does to a scene without haze)."""
    rng = np.random.default_rng(INVARIANCE_SEED)
    rows: list[dict[str, Any]] = []
    for k in scenes:
        clear = D.eolearn_scenes(real_dir, [k], D.EVAL_BANDS)[0]
        bgrn = clear[:4].astype("float32")
        restored_clear = learned_dehaze(net, bgrn, device)
        untouched = round(M.psnr(restored_clear, bgrn), 2)
        for level in D.EVAL_LEVELS:
            hazy, _ = D.synthesize(clear, D.EVAL_BANDS, rng, level=level, noise_std=0.002)
            restored = learned_dehaze(net, hazy[:4].astype("float32"), device)
            before = M.psnr(hazy[:4], bgrn)
            after = M.psnr(restored, restored_clear)
            rows.append(
                {
                    "scene": f"eolearn:k{k}",
                    "depth": level,
                    "hazy_vs_clear": round(before, 2),
                    "dehazed_hazy_vs_dehazed_clear": round(after, 2),
                    "invariance_gain_db": round(after - before, 2),
                    "dehazed_clear_vs_clear": untouched,
                }
            )
    gains = [r["invariance_gain_db"] for r in rows]
    return {
        "source": "REAL: eo-learn REFERENCE_SCENES.npy held-out clear scene(s) "
        f"{list(scenes)}, synthetic haze (physical model) at depths {list(D.EVAL_LEVELS)}, "
        f"seed {INVARIANCE_SEED}",
        "invariance_gain_db_min": min(gains),
        "invariance_gain_db_mean": round(float(np.mean(gains)), 2),
        "per_depth": rows,
    }


def real_hazy_scene(
    net: torch.nn.Module, real_dir: str | Path, device: Any = None
) -> dict[str, Any]:
    """REAL haze, not synthetic: the eo-learn scene under thin cloud and haze
    (:data:`models.dehaze.data.EOLEARN_HAZY_SCENE`) as it is, restored by the classical chain and
    by the learned model, each scored (PSNR in dB and NDVI MAE, BGRN) against every clear date of
    the same place. The clear dates are 10-40 days away, so the land itself changed between them:
    the clear dates scored against each other (``clear_vs_clear``) show how far that alone goes.
    Scenes k=3, 4 were training targets of the learned model (with synthetic haze); k=2 was not.
    """
    scenes = D.eolearn_scenes(
        real_dir,
        [D.EOLEARN_HAZY_SCENE, *D.EOLEARN_TEST_SCENES, *D.EOLEARN_TRAIN_SCENES],
        D.EVAL_BANDS,
    )
    hazy = scenes[0]
    clears = dict(zip((*D.EOLEARN_TEST_SCENES, *D.EOLEARN_TRAIN_SCENES), scenes[1:], strict=True))
    everywhere = np.ones(hazy.shape[1:], dtype=bool)
    pair = D.EvalPair("eolearn:hazy", D.EVAL_BANDS, hazy, hazy, everywhere, float("nan"))
    outs = {
        "hazy": hazy[:4],
        "classical": classical_dehaze(pair),
        "learned": learned_dehaze(net, hazy[:4].astype("float32"), device),
    }

    def scores(pred: np.ndarray, ref: np.ndarray) -> dict[str, float]:
        return {
            "psnr": round(M.psnr(pred, ref), 2),
            "ndvi_mae": round(M.ndvi_mae(pred, ref), 3),
        }

    against = {
        f"k{k}" + (" (held out)" if k in D.EOLEARN_TEST_SCENES else " (a training target)"): {
            method: scores(pred, clear[:4]) for method, pred in outs.items()
        }
        for k, clear in clears.items()
    }
    keys = sorted(clears)
    return {
        "source": f"REAL: eo-learn REFERENCE_SCENES.npy k={D.EOLEARN_HAZY_SCENE} (2015-07-31, "
        "thin cloud and haze) against the clear dates of the same 1 km x 1 km",
        "against": against,
        "clear_vs_clear": {
            f"k{a}_vs_k{b}": scores(clears[a][:4], clears[b][:4])
            for i, a in enumerate(keys)
            for b in keys[i + 1 :]
        },
    }


def evaluate_dehaze(
    archive: str | None = None,
    weights: str | None = None,
    real_dir: str | None = None,
    archive_items: int = 12,
    per_pair: bool = False,
    device: str | None = None,
) -> dict[str, Any]:
    """Held-out metrics of the hazy input, the classical dehaze and the learned model.

    ``archive``: demo archive root (default: the embedded one); ``weights``: a weights file to
    score instead of the committed ``models/weights/dehaze.pt`` (see :func:`load_network`);
    ``real_dir``: the shared real-data folder (eo-learn scene k=2); ``archive_items``: how many
    hazy archive items to score over the held-out block; ``per_pair``: include every pair's
    figures. Returns a dict with ``synthetic`` and ``demo_archive`` summaries and, with the real
    data, ``real_haze_invariance`` (:func:`haze_invariance`) and ``real_hazy_scene``
    (:func:`real_hazy_scene`).
    """
    from pipelines.demo import demo_archive_url

    archive = archive or demo_archive_url()
    real = Path(real_dir) if real_dir else D.real_data_dir()
    net = load_network(weights, device)
    dev = next(net.parameters()).device
    synthetic = evaluate_pairs(
        D.held_out_synthetic_pairs(archive, real if real.exists() else None), net, device=dev
    )
    archive_pairs = D.held_out_archive_pairs(archive, max_items=archive_items)
    archive_rows = evaluate_pairs(archive_pairs, net, device=dev)
    result: dict[str, Any] = {
        "archive": archive,
        "weights": weights or "models/weights/dehaze.pt",
        "held_out": "bottom-right quarter of the demo province; eo-learn scene k=2",
        "synthetic": summarise(synthetic),
        "demo_archive": summarise(archive_rows),
    }
    if real.exists():
        result["real_haze_invariance"] = haze_invariance(net, real, device=dev)
        result["real_hazy_scene"] = real_hazy_scene(net, real, device=dev)
    if per_pair:
        result["synthetic_pairs"] = synthetic
        result["demo_archive_pairs"] = archive_rows
    return result


def load_network(weights: str | Path | None = None, device: Any = None) -> torch.nn.Module:
    """The dehaze network in eval mode with ``weights`` (default: the committed ones).

    The weights' sha256 is checked against the model card (committed weights) or against a
    ``<weights>.sha256`` sidecar when one lies beside a given file.
    """
    from models.dehaze.network import DEFAULT_HPARAMS, build_network
    from models.device import pick_device
    from models.weights import card_path, card_sha256, load_state, read_card, weights_path

    hparams = dict(DEFAULT_HPARAMS)
    expected: str | None
    if card_path("dehaze").exists():
        hparams = dict(read_card("dehaze")["properties"].get("mlm:hyperparameters", hparams))
    if weights is None:
        path, expected = weights_path("dehaze"), card_sha256(read_card("dehaze"))
    else:
        path = Path(weights)
        sidecar = Path(f"{path}.sha256")
        expected = sidecar.read_text().split()[0] if sidecar.is_file() else None
    net = build_network(**hparams)
    net.load_state_dict(load_state(path, expected))
    return net.eval().to(pick_device(device))
