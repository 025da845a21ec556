"""The static province (pure numpy): DEM, river, counties, towns, parcels, land cover, flood zone.

All rasters are on the 10 m province grid, shape (y, x), row 0 at the north edge.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy import ndimage

from pipelines.classes import CROPS, FloodClass, LandClass
from pipelines.demo.noise import hash_uniform, smooth_field
from pipelines.demo.spec import SizeSpec

#: Base crop mix (wheat, corn, rice, cotton, soybean) of a county before the lowland adjustment.
CROP_MIX = np.array([6.0, 4.0, 2.0, 2.5, 2.5])
_SYLLABLES = tuple(
    [
        "an",
        "bei",
        "chang",
        "dong",
        "feng",
        "gao",
        "guang",
        "he",
        "hua",
        "jia",
        "jin",
        "kai",
        "lan",
        "li",
        "lin",
        "liu",
        "luo",
        "nan",
        "ning",
        "ping",
        "qi",
        "qing",
        "shang",
        "tai",
        "tang",
        "wei",
        "xi",
        "xin",
        "yang",
        "yi",
        "yong",
        "yu",
        "ze",
        "zhang",
        "zhen",
        "zhou",
    ]
)


@dataclass
class Landscape:
    """Static layers of the province (10 m grid) and per-parcel / per-county attributes."""

    dem: np.ndarray
    """Elevation, metres above sea level, float32 (y, x)."""
    hand: np.ndarray
    """Height above the river water surface, metres, float32 (y, x)."""
    river_dist: np.ndarray
    """Distance to the river centre line, metres, float32 (y, x)."""
    landcover: np.ndarray
    """LandClass codes, uint8 (y, x)."""
    parcels: np.ndarray
    """Parcel id, uint32 (y, x); 0 = not a parcel."""
    counties: np.ndarray
    """County id 1..N, uint16 (y, x)."""
    texture: np.ndarray
    """Static multiplicative brightness texture (~1 +- 0.05), float32 (y, x)."""
    flood: np.ndarray
    """FloodClass of the flood event, uint8 (y, x)."""
    parcel_crop: np.ndarray
    """LandClass crop code per parcel id (index 0 unused), uint8 (n_parcels + 1,)."""
    parcel_county: np.ndarray
    """County id per parcel id, uint16 (n_parcels + 1,)."""
    parcel_area_ha: np.ndarray
    """Parcel area in hectares, float64 (n_parcels + 1,)."""
    county_names: list[str]
    """County names; county id k is ``county_names[k - 1]``."""

    @property
    def n_parcels(self) -> int:
        """Number of parcels (ids 1..n)."""
        return int(self.parcel_crop.shape[0] - 1)

    @property
    def n_counties(self) -> int:
        """Number of counties (ids 1..n)."""
        return len(self.county_names)


def _smoothstep(x: np.ndarray) -> np.ndarray:
    x = np.clip(x, 0.0, 1.0)
    return x * x * (3.0 - 2.0 * x)


def county_names(rng: np.random.Generator, n: int) -> list[str]:
    """``n`` distinct pinyin-like county names."""
    names: list[str] = []
    while len(names) < n:
        a, b = rng.choice(len(_SYLLABLES), 2, replace=False)
        name = (_SYLLABLES[a] + _SYLLABLES[b]).capitalize()
        if name not in names:
            names.append(name)
    return names


def build_landscape(spec: SizeSpec, seed: int) -> Landscape:
    """Generate the static province for ``spec`` from ``seed`` (deterministic)."""
    rng = np.random.Generator(np.random.PCG64(np.random.SeedSequence([seed, 1])))
    n = spec.width
    res = spec.resolution
    ext = n * res
    shape = (n, n)
    u = ((np.arange(n, dtype=np.float32) + 0.5) * res)[None, :]  # east, m
    v = ((np.arange(n, dtype=np.float32) + 0.5) * res)[:, None]  # south, m

    # --- river: a meandering centre line flowing west -> east -------------------------------
    lam1 = ext * rng.uniform(0.7, 1.2)
    lam2 = min(2600.0, ext * 0.4) * rng.uniform(0.8, 1.2)
    ph1, ph2 = rng.uniform(0, 2 * np.pi, 2)
    a1, a2 = 0.10 * ext, min(300.0, 0.05 * ext)
    yc0 = ext * rng.uniform(0.40, 0.60)
    uu = u[0]
    yc = yc0 + a1 * np.sin(2 * np.pi * uu / lam1 + ph1) + a2 * np.sin(2 * np.pi * uu / lam2 + ph2)
    dyc = (2 * np.pi / lam1) * a1 * np.cos(2 * np.pi * uu / lam1 + ph1) + (
        2 * np.pi / lam2
    ) * a2 * np.cos(2 * np.pi * uu / lam2 + ph2)
    river_dist = (np.abs(v - yc[None, :]) / np.sqrt(1.0 + dyc * dyc)[None, :]).astype(np.float32)
    half_width = float(np.clip(ext / 400.0, 25.0, 60.0))

    # --- DEM: plain with a gentle eastward slope, fine relief, hills, the river valley ------
    f = 8 if n >= 1024 else 4
    relief = smooth_field(rng, shape, factor=f, beta=3.2)
    hills_src = smooth_field(rng, shape, factor=f * 2, beta=4.0)
    hill_thr = float(np.quantile(hills_src[::8, ::8], 0.90))
    hills = _smoothstep((hills_src - hill_thr) / 1.2)
    valley_w = float(np.clip(ext / 16.0, 400.0, 1500.0))
    valley = np.exp(-((river_dist / valley_w) ** 2)).astype(np.float32)
    hills *= (1.0 - valley) * (river_dist > 3 * valley_w)
    regional = (85.0 - 0.4 * u / 1000.0 + 0.1 * v / 1000.0).astype(np.float32)
    depth = 9.0
    dem = regional + (3.0 * relief + 140.0 * hills) * (1.0 - valley) - depth * valley
    surface = (85.0 - 0.4 * uu / 1000.0 + 0.1 * yc / 1000.0 - depth - 0.8).astype(np.float32)
    river = river_dist < half_width
    dem = np.where(river, surface[None, :] - 1.5, dem).astype(np.float32)
    hand = np.maximum(dem - surface[None, :], 0.0).astype(np.float32)
    del relief

    # --- counties: warped Voronoi of a jittered k x k lattice ----------------------------
    k = spec.counties_per_side
    cell = ext / k
    gy, gx = np.meshgrid(np.arange(k), np.arange(k), indexing="ij")
    cx = (gx + 0.5 + rng.uniform(-0.25, 0.25, gx.shape)) * cell
    cy = (gy + 0.5 + rng.uniform(-0.25, 0.25, gy.shape)) * cell
    cf = 4
    m = -(-n // cf)
    uc = ((np.arange(m) + 0.5) * cf * res)[None, :]
    vc = ((np.arange(m) + 0.5) * cf * res)[:, None]
    wx = smooth_field(rng, (m, m), factor=8, beta=3.0) * 0.08 * cell
    wy = smooth_field(rng, (m, m), factor=8, beta=3.0) * 0.08 * cell
    best = np.full((m, m), np.inf, np.float32)
    cid = np.zeros((m, m), np.uint16)
    for i, (sx, sy) in enumerate(zip(cx.ravel(), cy.ravel(), strict=True)):
        d = (uc + wx - sx) ** 2 + (vc + wy - sy) ** 2
        closer = d < best
        best = np.where(closer, d, best)
        cid[closer] = i + 1
    counties = np.repeat(np.repeat(cid, cf, 0), cf, 1)[:n, :n]
    names = county_names(rng, k * k)
    del best, wx, wy

    # --- towns (county seats) and villages ------------------------------------------------
    urban_noise = smooth_field(rng, shape, factor=2, beta=2.5)
    urban = np.zeros(shape, bool)
    r_town = float(np.clip(cell * 0.07, 150.0, 900.0))
    for sx, sy in zip(cx.ravel(), cy.ravel(), strict=True):
        d = np.sqrt((u - sx) ** 2 + (v - sy) ** 2)
        urban |= d < r_town * (1.0 + 0.25 * urban_noise)
    vs = 1300.0
    ci = np.floor(u / vs).astype(np.int64)
    cj = np.floor(v / vs).astype(np.int64)
    r_v = 70.0 + 90.0 * hash_uniform(ci, cj, salt=seed * 7 + 1)
    jit = vs / 2 - 200.0
    vx = (ci + 0.5) * vs + (2 * hash_uniform(ci, cj, salt=seed * 7 + 2) - 1) * jit
    vy = (cj + 0.5) * vs + (2 * hash_uniform(ci, cj, salt=seed * 7 + 3) - 1) * jit
    present = hash_uniform(ci, cj, salt=seed * 7 + 4) < 0.8
    dv = np.sqrt((u - vx) ** 2 + (v - vy) ** 2)
    urban |= present & (dv < r_v * (1.0 + 0.3 * urban_noise))
    del dv, vx, vy, r_v, present, urban_noise

    # --- land cover --------------------------------------------------------------------------
    lake_src = smooth_field(rng, shape, factor=4, beta=3.0)
    lake_thr = float(np.quantile(lake_src[::4, ::4], 0.985))
    lakes = (lake_src > lake_thr) & (hand < 8.0) & ~river
    patch = smooth_field(rng, shape, factor=4, beta=2.5)
    patch_thr = float(np.quantile(patch[::4, ::4], 0.95))
    forest = (hills > 0.45) | ((river_dist < half_width + 120.0) & (patch > 0.5) & ~river)
    grass = (hills > 0.15) | (river_dist < half_width + 50.0) | (patch > patch_thr)
    landcover = np.zeros(shape, np.uint8)
    landcover[:] = LandClass.GRASSLAND
    crop_area = ~(grass | forest | urban | lakes | river)
    landcover[forest] = LandClass.FOREST
    landcover[urban & ~river] = LandClass.URBAN
    landcover[lakes] = LandClass.WATER
    landcover[river] = LandClass.RIVER
    del lake_src, patch, hills, hills_src, lakes, forest, grass

    # --- field grid: per-county rotated blocks split into strips --------------------------
    angles = rng.uniform(-np.pi / 9, np.pi / 9, k * k + 1) + (rng.random(k * k + 1) < 0.3) * (
        np.pi / 2
    )
    block_len = rng.uniform(450.0, 900.0, k * k + 1)
    block_wid = rng.uniform(450.0, 700.0, k * k + 1)
    warp_p = smooth_field(rng, shape, factor=8, beta=3.0) * 12.0
    warp_q = smooth_field(rng, shape, factor=8, beta=3.0) * 12.0
    th = angles[counties]
    p = (u * np.cos(th) + v * np.sin(th) + warp_p).astype(np.float32)
    q = (-u * np.sin(th) + v * np.cos(th) + warp_q).astype(np.float32)
    del th, warp_p, warp_q
    bl, bw = block_len[counties], block_wid[counties]
    bi = np.floor(p / bl).astype(np.int64)
    bj = np.floor(q / bw).astype(np.int64)
    strip_w = np.exp(
        np.log(40.0) + np.log(330.0 / 40.0) * hash_uniform(counties, bi, bj, salt=seed)
    )
    st = np.floor((q - bj * bw) / strip_w).astype(np.int64)
    halves = (hash_uniform(counties, bi, bj, salt=seed + 11) < 0.3) & (p - bi * bl > bl / 2)
    key = (
        counties.astype(np.int64) * 1_000_003
        + bi * 7919 * 131
        + bj * 104729
        + st * 17
        + halves.astype(np.int64)
    )
    del p, q, bl, bw, bi, bj, strip_w, st, halves
    margin = np.zeros(shape, bool)
    margin[:, :-1] |= key[:, :-1] != key[:, 1:]
    margin[:-1, :] |= key[:-1, :] != key[1:, :]
    del key
    interior = crop_area & ~margin
    labels, _ = ndimage.label(interior, structure=[[0, 1, 0], [1, 1, 1], [0, 1, 0]])
    sizes = np.bincount(labels.ravel())
    min_px = round(1.0e4 / (res * res))  # 1 ha
    keep = sizes >= min_px
    keep[0] = False
    remap = np.zeros(sizes.shape[0], np.uint32)
    remap[keep] = np.arange(1, int(keep.sum()) + 1, dtype=np.uint32)
    parcels = remap[labels]
    del labels, interior, margin
    n_par = int(keep.sum())
    landcover[crop_area & (parcels == 0)] = LandClass.GRASSLAND

    # --- crops per parcel -------------------------------------------------------------------
    flat = parcels.ravel()
    cnt = np.bincount(flat, minlength=n_par + 1).astype(np.float64)
    cnt[0] = 1.0
    mean_hand = np.bincount(flat, weights=hand.ravel(), minlength=n_par + 1) / cnt
    mean_rd = np.bincount(flat, weights=river_dist.ravel(), minlength=n_par + 1) / cnt
    parcel_county = np.zeros(n_par + 1, np.uint16)
    parcel_county[flat] = counties.ravel()
    mix = rng.dirichlet(CROP_MIX * 3.0, size=k * k + 1)
    weights = mix[parcel_county].copy()
    lowland = (mean_hand < 3.5) & (mean_rd < 2500.0)
    weights[:, 2] *= np.where(lowland, 8.0, 0.1)
    weights /= weights.sum(axis=1, keepdims=True)
    draw = rng.random(n_par + 1)
    choice = (draw[:, None] > np.cumsum(weights, axis=1)).sum(axis=1).clip(0, 4)
    crop_codes = np.array([int(c) for c in CROPS], np.uint8)
    parcel_crop = crop_codes[choice]
    parcel_crop[0] = 0
    order = rng.permutation(np.arange(1, n_par + 1))
    for j, code in enumerate(crop_codes):
        if n_par >= len(crop_codes) and not np.any(parcel_crop[1:] == code):
            pref = order[np.argsort(-weights[order, j], kind="stable")]
            for pid in pref:  # take a parcel from a crop that has more than one
                if np.sum(parcel_crop == parcel_crop[pid]) > 1:
                    parcel_crop[pid] = code
                    break
    crop_px = parcels > 0
    landcover[crop_px] = parcel_crop[parcels[crop_px]]
    area_ha = np.bincount(flat, minlength=n_par + 1) * (res * res) / 1.0e4
    area_ha[0] = 0.0

    # --- flood zone of the event: low land near the river ---------------------------------
    fnoise = smooth_field(rng, shape, factor=4, beta=3.0)
    water = (landcover == LandClass.WATER) | (landcover == LandClass.RIVER)
    score = hand + 0.8 * fnoise + river_dist / 2000.0
    cand = ~water & (river_dist < max(3000.0, 4 * valley_w))
    thr = float(np.quantile(score[::4, ::4][~water[::4, ::4]], 0.07))
    flooded = cand & (score < thr)
    flooded = ndimage.binary_opening(flooded, iterations=2)
    flood = np.full(shape, FloodClass.DRY, np.uint8)
    flood[flooded] = FloodClass.FLOODED
    flood[water] = FloodClass.PERMANENT_WATER
    del fnoise, score, cand

    texture = (1.0 + 0.04 * smooth_field(rng, shape, factor=1, beta=1.5)).astype(np.float32)
    return Landscape(
        dem=dem,
        hand=hand,
        river_dist=river_dist,
        landcover=landcover,
        parcels=parcels,
        counties=counties.astype(np.uint16),
        texture=texture,
        flood=flood,
        parcel_crop=parcel_crop,
        parcel_county=parcel_county,
        parcel_area_ha=area_ha,
        county_names=names,
    )
