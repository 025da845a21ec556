"""Training and evaluation pairs for the learned dehaze model: the same place at different haze.

Two sources:

(a) **Synthesised** with the scattering model ``I = J t + A (1 - t)`` per band ``b``, with a
    wavelength-dependent transmission ``t_b = exp(-d * (lambda_b / 550 nm) ** -alpha)``
    (Angstrom law, ``alpha`` drawn in 0.5..1.5), a spatially smooth optical depth ``d`` at
    550 nm (a scene level times a smooth random field), an atmospheric light ``A`` per band (a
    level at 550 nm of 0.18..0.38 reflectance, bluer at shorter wavelengths) and sensor noise.
    The clear reflectance ``J`` comes from the demo archive's truth cube (the haze- and
    cloud-free reflectance of every S2 item) and from the clear real eo-learn scenes.
(b) **The archive's own pairs**: a hazy S2 item of the demo archive (read with
    :func:`pipelines.load.load_s2` on the archive grid) and the truth clear reflectance of the
    same date; pixels that are not clear in the truth (cloud, cloud shadow, cirrus, nodata) are
    masked out of the loss and the metrics.

**Held-out split** (never seen in training): the bottom-right quarter of the demo province
(rows and columns from half the grid on; training patches keep ``HALO`` px away from it, so
not even their receptive field reaches it) and eo-learn scene ``k = 2`` (2015-09-09).
Training uses the other three quarters and eo-learn scenes ``k = 3, 4``.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
from scipy import ndimage

from models.dehaze.network import BANDS, HALO
from pipelines.classes import CloudClass
from pipelines.config import real_data_dir
from pipelines.errors import BadInputError

if TYPE_CHECKING:
    from odc.geo.geobox import GeoBox

__all__ = [
    "EOLEARN_BAND_INDEX",
    "EOLEARN_HAZY_SCENE",
    "EOLEARN_TEST_SCENES",
    "EOLEARN_TRAIN_SCENES",
    "WAVELENGTH_NM",
    "HazeDraw",
    "RealPairs",
    "archive_clear_patches",
    "archive_hazy_pairs",
    "eolearn_scenes",
    "held_out_block",
    "real_data_dir",
    "sample_airlight",
    "sample_depth",
    "smooth_field",
    "synthesize",
    "transmission",
]


#: Central wavelengths (nm) of the bands the synthesis knows.
WAVELENGTH_NM = {
    "B02": 490.0,
    "B03": 560.0,
    "B04": 665.0,
    "B08": 842.0,
    "B11": 1610.0,
    "B12": 2190.0,
}
#: Reference wavelength (nm) of the optical depth ``d``.
REF_NM = 550.0
#: Band index of each band in eo-learn's REFERENCE_SCENES.npy (B01, B02, ..., B8A, B09..B12).
EOLEARN_BAND_INDEX = {"B02": 1, "B03": 2, "B04": 3, "B08": 7, "B11": 11, "B12": 12}
EOLEARN_TRAIN_SCENES = (3, 4)
EOLEARN_TEST_SCENES = (2,)
#: The eo-learn scene under real thin cloud and haze (2015-07-31; CLM 1, s2cloudless CLP 0.74,
#: PROVENANCE.md): never used in training.
EOLEARN_HAZY_SCENE = 1
#: Scenes count as hazy from this mean optical depth (550 nm) over their clear pixels.
HAZY_DEPTH = 0.1


def wavelengths(bands: Sequence[str]) -> np.ndarray:
    """Central wavelengths (nm) of ``bands``, float64 (C,)."""
    missing = [b for b in bands if b not in WAVELENGTH_NM]
    if missing:
        raise BadInputError("bands", list(bands), f"bands among {sorted(WAVELENGTH_NM)}")
    return np.array([WAVELENGTH_NM[b] for b in bands], dtype="float64")


def transmission(depth: np.ndarray, wavelength_nm: np.ndarray, alpha: float) -> np.ndarray:
    """``t_b = exp(-d (lambda_b / 550 nm) ** -alpha)`` (C, y, x); ``depth`` (y, x) at 550 nm."""
    depth = np.asarray(depth, dtype="float64")
    if np.any(depth < 0):
        raise BadInputError("depth", float(depth.min()), "an optical depth >= 0")
    beta = (np.asarray(wavelength_nm, dtype="float64") / REF_NM) ** (-float(alpha))
    return np.exp(-beta[:, None, None] * depth[None])


def smooth_field(rng: np.random.Generator, shape: tuple[int, int], scale_px: float) -> np.ndarray:
    """A smooth random field (y, x): unit-variance white noise on a grid ``scale_px`` px apart,
    interpolated (cubic spline) at every pixel, at a random offset. Features are about
    ``scale_px`` px across; a patch much smaller than that sees a gentle gradient."""
    h, w = shape
    scale_px = max(float(scale_px), 2.0)
    ch, cw = int(np.ceil(h / scale_px)) + 4, int(np.ceil(w / scale_px)) + 4
    coarse = rng.standard_normal((ch, cw))
    oy, ox = rng.uniform(1.0, 2.0, size=2)
    yy = oy + np.arange(h) / scale_px
    xx = ox + np.arange(w) / scale_px
    coords = np.meshgrid(yy, xx, indexing="ij")
    return ndimage.map_coordinates(coarse, coords, order=3, mode="nearest")


def sample_depth(
    rng: np.random.Generator,
    shape: tuple[int, int],
    level: float | None = None,
    *,
    level_range: tuple[float, float] = (0.0, 1.3),
) -> np.ndarray:
    """Optical depth at 550 nm (y, x): ``level * exp(v * field)``, ``field`` smooth (64-512 px).

    ``level``: the scene's median depth (drawn uniformly in ``level_range`` when None); ``v``
    (0..0.5) sets how much the haze varies across the patch.
    """
    if level is None:
        level = float(rng.uniform(*level_range))
    if level < 0:
        raise BadInputError("level", level, "an optical depth >= 0")
    field = smooth_field(rng, shape, float(rng.uniform(64.0, 512.0)))
    return level * np.exp(float(rng.uniform(0.0, 0.5)) * field)


def sample_airlight(rng: np.random.Generator, wavelength_nm: np.ndarray) -> np.ndarray:
    """Atmospheric light per band (C,) reflectance: ``a0 (lambda / 550) ** -g`` with jitter.

    ``a0`` 0.18..0.38 (the reflectance of optically thick haze), ``g`` 0..0.6 (haze bluer than
    white), each band within 3 %.
    """
    a0 = rng.uniform(0.18, 0.38)
    g = rng.uniform(0.0, 0.6)
    wl = np.asarray(wavelength_nm, dtype="float64")
    return a0 * (wl / REF_NM) ** (-g) * rng.uniform(0.97, 1.03, size=wl.shape)


@dataclass(frozen=True)
class HazeDraw:
    """The haze of one synthesised pair."""

    depth: np.ndarray
    """Optical depth at 550 nm (y, x)."""
    alpha: float
    """Angstrom exponent."""
    airlight: np.ndarray
    """Atmospheric light per band (C,), reflectance."""
    transmission: np.ndarray
    """Transmission per band (C, y, x), in (0, 1]."""
    noise_std: float
    """Standard deviation of the Gaussian sensor noise added (reflectance)."""


def synthesize(
    clear: np.ndarray,
    bands: Sequence[str],
    rng: np.random.Generator,
    *,
    level: float | None = None,
    level_range: tuple[float, float] = (0.0, 1.3),
    alpha: float | None = None,
    airlight: np.ndarray | None = None,
    noise_std: float | None = None,
) -> tuple[np.ndarray, HazeDraw]:
    """Hazy version (C, y, x) float32 of the clear reflectance ``clear`` (C, y, x) of ``bands``.

    ``I = J t + A (1 - t) + noise``; every draw not given is taken from ``rng`` (``level`` in
    ``level_range``, ``alpha`` 0.5..1.5, ``airlight`` by :func:`sample_airlight`, ``noise_std``
    0..0.003). Returns the hazy image and the :class:`HazeDraw`.
    """
    clear = np.asarray(clear, dtype="float64")
    if clear.ndim != 3 or clear.shape[0] != len(bands):
        raise BadInputError("clear", clear.shape, f"a ({len(bands)}, y, x) reflectance array")
    wl = wavelengths(bands)
    depth = sample_depth(rng, clear.shape[1:], level, level_range=level_range)
    alpha = float(rng.uniform(0.5, 1.5)) if alpha is None else float(alpha)
    airlight = sample_airlight(rng, wl) if airlight is None else np.asarray(airlight, "float64")
    noise_std = float(rng.uniform(0.0, 0.003)) if noise_std is None else float(noise_std)
    t = transmission(depth, wl, alpha)
    hazy = clear * t + airlight[:, None, None] * (1.0 - t)
    if noise_std > 0:
        hazy = hazy + rng.normal(0.0, noise_std, size=hazy.shape)
    draw = HazeDraw(
        depth=depth, alpha=alpha, airlight=airlight, transmission=t, noise_std=noise_std
    )
    return hazy.astype("float32"), draw


# --- split --------------------------------------------------------------------------------


def held_out_block(shape: tuple[int, int]) -> tuple[slice, slice]:
    """(rows, cols) of the held-out bottom-right quarter of a (y, x) grid."""
    h, w = shape
    return slice(h // 2, h), slice(w // 2, w)


def _train_origins(
    rng: np.random.Generator, shape: tuple[int, int], size: int, n: int
) -> list[tuple[int, int]]:
    """``n`` top-left corners of ``size`` px patches in the training region (HALO px clear of
    the held-out block)."""
    h, w = shape
    rows, cols = held_out_block(shape)
    out: list[tuple[int, int]] = []
    while len(out) < n:
        r = int(rng.integers(0, h - size + 1))
        c = int(rng.integers(0, w - size + 1))
        if r + size + HALO > rows.start and c + size + HALO > cols.start:
            continue  # the patch or its context reaches the held-out block
        out.append((r, c))
    return out


# --- sources ------------------------------------------------------------------------------


def eolearn_scenes(
    real_dir: str | Path, ks: Sequence[int], bands: Sequence[str] = BANDS
) -> np.ndarray:
    """eo-learn REFERENCE_SCENES ``ks`` as (k, C, y, x) float32 reflectance of ``bands``."""
    path = Path(real_dir) / "eolearn-testeopatch" / "REFERENCE_SCENES.npy"
    if not path.is_file():
        raise BadInputError(
            "real_dir", str(real_dir), "the shared real-data folder", f"{path} missing"
        )
    scenes = np.load(path, mmap_mode="r")
    idx = [EOLEARN_BAND_INDEX[b] for b in bands]
    return np.stack([np.moveaxis(np.asarray(scenes[k][..., idx]), -1, 0) for k in ks]).astype(
        "float32"
    )


def _open_truth(archive: str) -> tuple[Any, dict[str, Any]]:
    import xarray as xr

    from pipelines import storage
    from pipelines.demo import open_archive_info

    info = open_archive_info(archive)
    truth = xr.open_zarr(storage.join(archive, info["truth"]["s2"]), consolidated=False)
    return truth, info


def scene_haze(archive: str, step: int = 8) -> list[dict[str, Any]]:
    """Per truth date: item id, clear fraction and mean optical depth over clear pixels, for the
    training region and the held-out block (from every ``step``-th pixel)."""
    truth, _ = _open_truth(archive)
    cc = truth["cloud_class"][:, ::step, ::step].values
    hd = truth["haze_density"][:, ::step, ::step].values
    rows, cols = held_out_block(cc.shape[1:])
    test = np.zeros(cc.shape[1:], bool)
    test[rows, cols] = True
    out = []
    for i, item_id in enumerate(truth["item_id"].values):
        clear = cc[i] == CloudClass.CLEAR
        row: dict[str, Any] = {"index": i, "item_id": str(item_id)}
        for name, region in (("train", ~test), ("test", test)):
            c = clear & region
            row[f"{name}_clear"] = float(c.sum() / region.sum())
            row[f"{name}_depth"] = float(hd[i][c].mean()) if c.any() else float("nan")
        out.append(row)
    return out


def _truth_bgrn(truth: Any, index: int, rows: slice, cols: slice) -> np.ndarray:
    """Truth clear reflectance (4, y, x) float32 of one date and window."""
    t = truth.isel(time=index, y=rows, x=cols)
    return np.stack([t[b].values for b in BANDS]).astype("float32") / 10000.0


def archive_clear_patches(
    archive: str, *, size: int, per_date: int, seed: int = 0, dates: Sequence[int] | None = None
) -> np.ndarray:
    """Clear BGRN patches (n, 4, size, size) uint16 x 1e4 from the truth cube's training region.

    ``per_date`` patches at random places of each date in ``dates`` (all when None).
    """
    truth, _ = _open_truth(archive)
    shape = (truth.sizes["y"], truth.sizes["x"])
    rng = np.random.default_rng(seed)
    dates = range(truth.sizes["time"]) if dates is None else dates
    out = []
    for i in dates:
        cube = np.stack([truth[b][i].values for b in BANDS])  # (4, y, x) uint16
        for r, c in _train_origins(rng, shape, size, per_date):
            out.append(cube[:, r : r + size, c : c + size])
    return np.stack(out)


@dataclass
class RealPairs:
    """Hazy archive items paired with the truth clear reflectance of the same date."""

    hazy: np.ndarray
    """(n, 4, y, x) float32 reflectance of the item, NaN-free (nodata set to 0)."""
    clear: np.ndarray
    """(n, 4, y, x) float32 truth clear reflectance."""
    mask: np.ndarray
    """(n, y, x) bool: pixels clear in the truth and valid in the item."""
    item_ids: list[str]


def _geobox(info: dict[str, Any]) -> GeoBox:
    from affine import Affine
    from odc.geo.geobox import GeoBox

    return GeoBox((info["height"], info["width"]), Affine(*info["transform"][:6]), info["crs"])


def hazy_items(archive: str, split: str, min_clear: float = 0.2) -> list[dict[str, Any]]:
    """Truth dates whose ``split`` region ("train" or "test") is hazy and at least ``min_clear``
    clear: dicts of :func:`scene_haze`."""
    if split not in ("train", "test"):
        raise BadInputError("split", split, "'train' or 'test'")
    return [
        s
        for s in scene_haze(archive)
        if s[f"{split}_clear"] >= min_clear and s[f"{split}_depth"] >= HAZY_DEPTH
    ]


def archive_hazy_pairs(
    archive: str,
    *,
    size: int,
    per_item: int,
    seed: int = 0,
    min_clear_share: float = 0.5,
    max_items: int | None = None,
) -> RealPairs:
    """Patches (``size`` px) of the training region of hazy items with their truth.

    ``per_item`` patches per hazy item, each at least ``min_clear_share`` clear in the truth.
    """
    import dask

    from pipelines.demo import archive_items
    from pipelines.load import load_s2

    truth, info = _open_truth(archive)
    geobox = _geobox(info)
    shape = (truth.sizes["y"], truth.sizes["x"])
    items = {i["id"]: i for i in archive_items(archive, "sentinel-2-l2a")}
    chosen = hazy_items(archive, "train")[:max_items]
    rng = np.random.default_rng(seed)
    hazy, clear, mask, ids = [], [], [], []
    for s in chosen:
        with dask.config.set(scheduler="threads", num_workers=2):
            img = load_s2([items[s["item_id"]]], geobox, bands=BANDS, with_scl=False).values[0]
        ref = np.stack([truth[b][s["index"]].values for b in BANDS]).astype("float32") / 1e4
        ok = (truth["cloud_class"][s["index"]].values == CloudClass.CLEAR) & np.isfinite(img).all(0)
        got = tries = 0
        while got < per_item and tries < 50 * per_item:
            tries += 1
            (r, c) = _train_origins(rng, shape, size, 1)[0]
            m = ok[r : r + size, c : c + size]
            if m.mean() < min_clear_share:
                continue
            hazy.append(np.nan_to_num(img[:, r : r + size, c : c + size], nan=0.0))
            clear.append(ref[:, r : r + size, c : c + size])
            mask.append(m)
            ids.append(s["item_id"])
            got += 1
    if not hazy:
        raise BadInputError(
            "archive", archive, "an archive with hazy S2 items in the training region"
        )
    return RealPairs(np.stack(hazy), np.stack(clear), np.stack(mask), ids)


# --- held-out evaluation pairs ----------------------------------------------------------------

#: Optical depths (550 nm) of the held-out synthetic pairs, cycled over the tiles.
EVAL_LEVELS = (0.15, 0.3, 0.5, 0.75, 1.0)
#: Bands of the held-out synthetic pairs: BGRN and the SWIR the classical dehaze uses.
EVAL_BANDS = ("B02", "B03", "B04", "B08", "B11", "B12")


@dataclass
class EvalPair:
    """One held-out pair: hazy and clear (C, y, x) float32 over ``bands``, scored pixels."""

    name: str
    bands: tuple[str, ...]
    hazy: np.ndarray
    clear: np.ndarray
    mask: np.ndarray
    depth: float
    """Median optical depth at 550 nm of the pair (synthetic) or mean over clear pixels (real)."""
    scl: np.ndarray | None = None
    """SCL codes (y, x) float of a real item; None for synthetic pairs."""


def held_out_synthetic_pairs(
    archive: str | None,
    real_dir: str | Path | None,
    *,
    tile: int = 256,
    n_tiles: int = 10,
    seed: int = 20260,
) -> list[EvalPair]:
    """Synthetic held-out pairs (``EVAL_BANDS``): archive tiles of the held-out block and the
    eo-learn test scene, hazed at each of ``EVAL_LEVELS`` in turn (fixed ``seed``).

    Archive tiles come from dates whose held-out block is >= 90 % clear with depth <= 0.06
    (their SWIR, which the truth lacks, is read from the item itself); B02-B08 are the truth.
    """
    import dask

    from pipelines.demo import archive_items
    from pipelines.load import load_s2

    rng = np.random.default_rng(seed)
    pairs: list[EvalPair] = []
    clears: list[tuple[str, np.ndarray]] = []
    if archive is not None:
        truth, info = _open_truth(archive)
        geobox = _geobox(info)
        rows, cols = held_out_block((truth.sizes["y"], truth.sizes["x"]))
        items = {i["id"]: i for i in archive_items(archive, "sentinel-2-l2a")}
        ok = [s for s in scene_haze(archive) if s["test_clear"] >= 0.9 and s["test_depth"] <= 0.06]
        pick = np.linspace(0, len(ok) - 1, min(n_tiles, len(ok))).round().astype(int)
        per_side = (rows.stop - rows.start) // tile
        for j, s in enumerate(ok[p] for p in pick):
            r = rows.start + (j % per_side) * tile
            c = cols.start + ((j * 3 + j // per_side) % per_side) * tile
            bgrn = _truth_bgrn(truth, s["index"], slice(r, r + tile), slice(c, c + tile))
            with dask.config.set(scheduler="threads", num_workers=2):
                swir = load_s2(
                    [items[s["item_id"]]],
                    geobox[r : r + tile, c : c + tile],
                    bands=("B11", "B12"),
                    with_scl=False,
                ).values[0]
            clears.append((f"demo:{s['item_id']}:{r}:{c}", np.concatenate([bgrn, swir])))
    if real_dir is not None:
        for k in EOLEARN_TEST_SCENES:
            scene = eolearn_scenes(real_dir, [k], EVAL_BANDS)[0]
            clears.extend((f"eolearn:k{k}", scene) for _ in EVAL_LEVELS)
    for j, (name, clear) in enumerate(clears):
        level = EVAL_LEVELS[j % len(EVAL_LEVELS)]
        hazy, _ = synthesize(clear, EVAL_BANDS, rng, level=level, noise_std=0.002)
        mask = np.isfinite(clear).all(0) & np.isfinite(hazy).all(0)
        pairs.append(
            EvalPair(f"{name}:d{level}", EVAL_BANDS, hazy, clear.astype("float32"), mask, level)
        )
    return pairs


def held_out_archive_pairs(archive: str, *, max_items: int | None = 12) -> list[EvalPair]:
    """The archive's hazy items over the held-out block with the truth of the same date.

    Bands ``EVAL_BANDS`` plus SCL; ``clear`` holds the truth BGRN (its SWIR rows are NaN: the
    truth has none); ``mask`` the pixels clear in the truth and valid in the item. At most
    ``max_items`` items, evenly spread over the hazy ones (all when None).
    """
    import dask

    from pipelines.demo import archive_items
    from pipelines.load import load_s2

    truth, info = _open_truth(archive)
    geobox = _geobox(info)
    rows, cols = held_out_block((truth.sizes["y"], truth.sizes["x"]))
    items = {i["id"]: i for i in archive_items(archive, "sentinel-2-l2a")}
    chosen = hazy_items(archive, "test")
    if max_items is not None and len(chosen) > max_items:
        pick = np.linspace(0, len(chosen) - 1, max_items).round().astype(int)
        chosen = [chosen[p] for p in pick]
    out = []
    for s in chosen:
        with dask.config.set(scheduler="threads", num_workers=2):
            s2 = load_s2(
                [items[s["item_id"]]], geobox[rows, cols], bands=EVAL_BANDS, with_scl=True
            ).values[0]
        ref = _truth_bgrn(truth, s["index"], rows, cols)
        clear = np.concatenate([ref, np.full((2, *ref.shape[1:]), np.nan, "float32")])
        t_cc = truth["cloud_class"][s["index"]].isel(y=rows, x=cols).values
        mask = (t_cc == CloudClass.CLEAR) & np.isfinite(s2[:4]).all(0)
        out.append(
            EvalPair(
                f"real:{s['item_id']}", EVAL_BANDS, s2[:6], clear, mask, s["test_depth"], s2[6]
            )
        )
    return out
