"""Quality of the super-resolution network beside bicubic, by Wald's protocol.

``terrapipe eval super_resolution`` calls :func:`evaluate_super_resolution`. Every reference image
is degraded 4x (:func:`models.super_resolution.data.degrade`), restored by the network (through
:func:`models.tiling.predict_tiled`, as in production) and by bicubic interpolation, and both are
scored against the original with :mod:`models.metrics` (PSNR, SSIM, SAM, ERGAS, NDVI MAE):

- ``real``: the clear eo-learn scenes (real S2 L1C, 10 m -> 40 m -> 10 m), each alone
  (``real_1date``) and with the other clear scenes as dates 1-2 (``real_multidate``); no SAR;
- ``demo_holdout``: the held-out block of the demo province, reference = the first date of each of
  the groups in :data:`EVAL_GROUPS`, with 1 or 4 dates (other dates masked where cloudy), without
  and with S1.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch

from models import metrics as M
from models.super_resolution import data as srdata
from models.super_resolution.network import HALO, SCALE, build_network, pack_inputs
from models.tiling import predict_tiled

NAME = "super_resolution"
EVAL_GROUPS = (2, 5)
"""Which of the evenly spread date groups score the demo hold-out (a spring and a summer one)."""
TILE = 64
"""Low-res tile size of the tiled prediction during evaluation."""


def load_network(weights: str | Path | None = None) -> torch.nn.Module:
    """The committed network (or ``weights``, checked against its ``.sha256`` or the card)."""
    from models import weights as wio

    card = wio.read_card(NAME)
    path = Path(weights) if weights is not None else wio.weights_path(NAME)
    sidecar = Path(str(path) + ".sha256")
    sha = sidecar.read_text().split()[0] if sidecar.is_file() else wio.card_sha256(card)
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


def _mean_scores(rows: list[dict[str, float]]) -> dict[str, float]:
    return {k: round(float(np.mean([r[k] for r in rows])), 4) for k in rows[0]}


def _compare(
    net: torch.nn.Module, cases: list[tuple[np.ndarray, np.ndarray, np.ndarray]]
) -> dict[str, Any]:
    """Mean scores of the model and of bicubic over ``cases`` = (packed input, lr date 0, truth)."""
    model_rows, bic_rows = [], []
    for x, lr0, ref in cases:
        pred = predict_tiled(net, x, scale=SCALE, halo=HALO, tile=TILE, device="cpu")
        model_rows.append(score(pred, ref))
        bic_rows.append(score(srdata.bicubic(lr0), ref))
    model, bic = _mean_scores(model_rows), _mean_scores(bic_rows)
    return {
        "model": model,
        "bicubic": bic,
        "psnr_gain_db": round(model["psnr"] - bic["psnr"], 3),
        "sam_gain_deg": round(bic["sam_deg"] - model["sam_deg"], 4),
        "n": len(cases),
    }


def evaluate_real(net: torch.nn.Module, folder: str | Path | None = None) -> dict[str, Any]:
    """Model vs bicubic on the clear eo-learn scenes, one date and multi-date (no SAR)."""
    scenes = srdata.load_real_scenes(folder)
    keys = sorted(scenes)
    lrs = {k: srdata.degrade(scenes[k]) for k in keys}
    single = [(pack_inputs([lrs[k]]), lrs[k], scenes[k]) for k in keys]
    multi = [
        (pack_inputs([lrs[k], *[lrs[o] for o in keys if o != k]]), lrs[k], scenes[k]) for k in keys
    ]
    return {"real_1date": _compare(net, single), "real_multidate": _compare(net, multi)}


def evaluate_demo_holdout(net: torch.nn.Module, archive: str) -> dict[str, Any]:
    """Model vs bicubic on the held-out demo block: 1 / 4 dates, without / with S1."""
    from pipelines.demo import open_archive_info

    info = open_archive_info(archive)
    block = srdata.holdout_block(info["height"], info["width"])
    stacks = srdata.load_demo_stacks(archive, window=block, group_indices=list(EVAL_GROUPS))
    out: dict[str, Any] = {
        "block_px": {"y": [block[0].start, block[0].stop], "x": [block[1].start, block[1].stop]}
    }
    for n_dates in (1, 4):
        for with_sar in (False, True):
            cases = []
            for g in range(stacks.lr.shape[0]):
                lr = stacks.lr[g]
                dates = [lr[0]] + [
                    np.where(stacks.valid[g, d][None], lr[d], np.nan) for d in range(1, n_dates)
                ]
                sar = stacks.sar[g, 0] if with_sar else None
                ref = stacks.hr[g, 0].astype(np.float32) / 10000.0
                cases.append((pack_inputs(dates, sar), lr[0], ref))
            key = f"demo_{n_dates}date{'s' if n_dates > 1 else ''}_{'sar' if with_sar else 'nosar'}"
            out[key] = _compare(net, cases)
    out["dates"] = [stacks.dates[g] for g in range(len(stacks.dates))]
    return out


def evaluate_super_resolution(
    archive: str | None = None,
    weights: str | None = None,
    *,
    net: torch.nn.Module | None = None,
    real_data: str | None = None,
    threads: int = 2,
) -> dict[str, Any]:
    """Scores of the network (``net``, else ``weights``, else the committed weights) vs bicubic.

    ``archive``: the demo archive (default: the embedded one); ``real_data``: the real test data
    folder (default: ``$TERRAPIPE_REAL_DATA`` or ../shared/data/real); ``threads``: torch CPU
    threads.
    """
    from pipelines.demo import demo_archive_url

    torch.set_num_threads(threads)
    archive = archive or demo_archive_url()
    if net is None:
        net = load_network(weights)
    net = net.eval()
    result = {**evaluate_real(net, real_data), **evaluate_demo_holdout(net, archive)}
    result["protocol"] = (
        "Wald: reference degraded 4x (Gaussian MTF 0.3 at Nyquist + decimation), restored to the "
        "reference grid; model via predict_tiled (halo "
        f"{HALO}, tile {TILE}) vs bicubic on the same input"
    )
    return result
