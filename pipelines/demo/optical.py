"""Sentinel-2 L2A scenes (pure numpy): surface reflectance, haze, clouds, shadows, cirrus, SCL.

Surface reflectance J mixes a vegetation and a background end-member per pixel; the vegetation
fraction is solved so the pixel has its target NDVI. Haze follows the scattering model
I = J t + A (1 - t), t = exp(-beta(lambda) d) with beta(lambda) = (lambda / 0.55 um) ** -1.3
(Angstrom), d the optical depth at 550 nm. Thick clouds blend towards a bright cloud spectrum,
cirrus adds a thin bright layer, shadows darken the surface under the cloud field displaced
away from the sun.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass, field

import numpy as np

from pipelines.classes import (
    SCL_CIRRUS,
    SCL_CLOUD_HIGH,
    SCL_CLOUD_MEDIUM,
    SCL_CLOUD_SHADOW,
    SCL_NODATA,
    SCL_NOT_VEGETATED,
    SCL_VEGETATION,
    SCL_WATER,
    CloudClass,
    FloodClass,
    LandClass,
)
from pipelines.demo.landscape import Landscape
from pipelines.demo.noise import block_mean, shift, smooth_field
from pipelines.demo.phenology import Phenology, class_ndvi, parcel_ndvi, rice_flooded

BANDS = ("B02", "B03", "B04", "B05", "B06", "B07", "B08", "B8A", "B11", "B12")
BANDS_10M = ("B02", "B03", "B04", "B08")
BANDS_20M = ("B05", "B06", "B07", "B8A", "B11", "B12")
WAVELENGTH_UM = np.array([0.49, 0.56, 0.665, 0.704, 0.74, 0.783, 0.842, 0.865, 1.61, 2.19])
ANGSTROM = 1.3
#: Haze extinction per band relative to 550 nm.
BETA = (WAVELENGTH_UM / 0.55) ** -ANGSTROM
_R, _N = BANDS.index("B04"), BANDS.index("B08")

# End-member surface reflectances per band (B02 ... B12).
VEG = np.array([0.030, 0.065, 0.030, 0.110, 0.330, 0.410, 0.450, 0.470, 0.230, 0.110])
FOREST_VEG = np.array([0.025, 0.050, 0.026, 0.090, 0.280, 0.350, 0.380, 0.400, 0.180, 0.085])
SOIL = np.array([0.085, 0.115, 0.150, 0.175, 0.195, 0.210, 0.225, 0.235, 0.310, 0.260])
WATER = np.array([0.055, 0.065, 0.045, 0.035, 0.020, 0.015, 0.012, 0.010, 0.005, 0.003])
TURBID = np.array([0.070, 0.090, 0.080, 0.070, 0.045, 0.035, 0.030, 0.027, 0.010, 0.006])
URBAN = np.array([0.110, 0.130, 0.150, 0.165, 0.180, 0.190, 0.200, 0.210, 0.250, 0.220])
CLOUD = np.array([0.560, 0.550, 0.540, 0.540, 0.540, 0.540, 0.530, 0.530, 0.380, 0.260])
#: Airlight A of the haze (reflectance units), a little bluer than white.
AIRLIGHT = np.array([0.300, 0.290, 0.280, 0.275, 0.270, 0.268, 0.265, 0.262, 0.220, 0.200])
CIRRUS_SPECTRUM = np.array([1.0, 1.0, 1.0, 1.0, 1.0, 1.0, 1.0, 1.0, 0.9, 0.8])
VEG_TABLE = np.stack([VEG, FOREST_VEG]).astype(np.float32)
BG_TABLE = np.stack([SOIL, WATER, TURBID, URBAN]).astype(np.float32)
BG_SOIL, BG_WATER, BG_TURBID, BG_URBAN = 0, 1, 2, 3

CLOUD_ALPHA = 0.3
"""Cloud opacity above which a pixel counts as cloud (SCL 8; 9 above 0.6)."""
CIRRUS_MIN = 0.012
"""Cirrus reflectance above which a pixel counts as cirrus (SCL 10)."""
SHADOW_MIN = 0.3
"""Shadow strength above which a pixel counts as cloud shadow (SCL 3)."""


@dataclass
class Surface:
    """Per-pixel surface state on one date (10 m grid)."""

    fc: np.ndarray
    """Vegetation fraction 0-1, float32."""
    veg: np.ndarray
    """Vegetation end-member index into VEG_TABLE, uint8."""
    bg: np.ndarray
    """Background end-member index into BG_TABLE, uint8."""
    bright: np.ndarray
    """Background brightness factor, float32."""
    water: np.ndarray
    """Open water (lakes, river, flood, flooded paddies before canopy), bool."""


@dataclass
class S2Scene:
    """One synthetic L2A acquisition: encoded assets, truth layers and SCL statistics."""

    dn: dict[str, np.ndarray]
    """Band name -> uint16 DN (10 m bands at full grid, 20 m bands at half)."""
    scl: np.ndarray
    """SCL codes at 20 m, uint8."""
    cloud_class: np.ndarray
    """CloudClass truth at 10 m, uint8."""
    haze: np.ndarray
    """Haze optical depth d at 550 nm, float32 (10 m)."""
    clear: dict[str, np.ndarray]
    """Haze- and cloud-free reflectance x 10000 of B02, B03, B04, B08, uint16 (10 m)."""
    valid: np.ndarray
    """Footprint (True inside the swath) at 10 m."""
    stats: dict[str, float] = field(default_factory=dict)
    """SCL class percentages, cloud cover and the scene draws."""


def surface(land: Landscape, phen: Phenology, date: dt.date, flood_active: bool = False) -> Surface:
    """Surface state of the province on ``date``."""
    doy = float(date.timetuple().tm_yday)
    lc = land.landcover
    ndvi_lut = np.zeros(256, np.float32)
    for code in (LandClass.FOREST, LandClass.GRASSLAND, LandClass.URBAN):
        ndvi_lut[int(code)] = class_ndvi(code, doy)
    pn = parcel_ndvi(land, phen, date.year, doy).astype(np.float32)
    pn[0] = 0.0
    ndvi = np.where(land.parcels > 0, pn[land.parcels], ndvi_lut[lc])
    ndvi *= 1.0 + 1.5 * (land.texture - 1.0)

    bg = np.zeros(lc.shape, np.uint8)
    bright = land.texture.copy()
    soil = phen.soil.astype(np.float32)
    soil[0] = 1.0
    bright *= np.where(land.parcels > 0, soil[land.parcels], np.float32(1.0))
    urban = lc == LandClass.URBAN
    bg[urban] = BG_URBAN
    bright[urban] *= 1.0 + 4.0 * (land.texture[urban] - 1.0)
    bg[lc == LandClass.WATER] = BG_WATER
    bg[lc == LandClass.RIVER] = BG_TURBID
    paddy = rice_flooded(phen, land, date.year, doy)
    paddy[0] = False
    flooded_paddy = paddy[land.parcels]
    bg[flooded_paddy] = BG_TURBID
    veg = (lc == LandClass.FOREST).astype(np.uint8)

    vr, vn = VEG_TABLE[veg, _R], VEG_TABLE[veg, _N]
    br, bn = BG_TABLE[bg, _R] * bright, BG_TABLE[bg, _N] * bright
    num = ndvi * (bn + br) - (bn - br)
    den = (vn - vr) - (bn - br) - ndvi * ((vn + vr) - (bn + br))
    fc = np.clip(num / np.where(np.abs(den) < 1e-6, 1e-6, den), 0.0, 1.0).astype(np.float32)
    permanent = (lc == LandClass.WATER) | (lc == LandClass.RIVER)
    fc[permanent] = 0.0
    water = permanent | (flooded_paddy & (fc < 0.3))
    if flood_active:
        fl = (land.flood == FloodClass.FLOODED) & (lc != LandClass.FOREST)
        bg[fl] = BG_TURBID
        bright[fl] = 1.0
        fc[fl] *= 0.25
        water |= fl
    return Surface(fc=fc, veg=veg, bg=bg, bright=bright, water=water)


def reflectance(s: Surface, band: int) -> np.ndarray:
    """Surface reflectance J of band index ``band`` (into BANDS), float32 (y, x)."""
    v = VEG_TABLE[:, band][s.veg]
    b = BG_TABLE[:, band][s.bg]
    b *= s.bright
    v -= b
    v *= s.fc
    v += b
    return v


def encode_dn(refl: np.ndarray, valid: np.ndarray) -> np.ndarray:
    """L2A DN = round((reflectance + 0.1) * 10000) (baseline >= 04.00), 0 = nodata, uint16."""
    dn = np.clip(np.rint((refl + 0.1) * 10000.0), 1, 65535).astype(np.uint16)
    dn[~valid] = 0
    return dn


def footprint(shape: tuple[int, int], rng: np.random.Generator, partial: bool) -> np.ndarray:
    """Swath footprint: all True, or a tilted swath edge leaving 25-75 % of the grid valid."""
    if not partial:
        return np.ones(shape, bool)
    h, w = shape
    tilt = np.tan(np.deg2rad(rng.uniform(8.0, 14.0)))
    frac = rng.uniform(0.25, 0.75)
    east = rng.random() < 0.5
    rows = np.arange(h, dtype=np.float32)[:, None]
    cols = np.arange(w, dtype=np.float32)[None, :]
    edge = frac * w + tilt * (rows - h / 2)
    return (cols < edge) if east else (cols >= w - edge)


def s2_scene(
    land: Landscape,
    phen: Phenology,
    date: dt.date,
    rng: np.random.Generator,
    *,
    sun_azimuth: float,
    sun_elevation: float,
    flood_active: bool = False,
    partial: bool = False,
) -> S2Scene:
    """Generate one L2A acquisition on ``date`` (all draws from ``rng``)."""
    shape = land.landcover.shape
    n = shape[0]
    res = 10.0
    f = 4 if n >= 512 else 2
    month = date.month
    # --- scene draws --------------------------------------------------------------------
    p_clear = 0.30 if month in (6, 7, 8) else 0.45
    u = rng.random()
    if u < p_clear:
        cover = rng.uniform(0.0, 0.02)
    elif u < p_clear + 0.35:
        cover = rng.uniform(0.05, 0.40)
    else:
        cover = rng.uniform(0.40, 0.95)
    has_cirrus = rng.random() < 0.3
    cirrus_extent = rng.uniform(0.1, 0.5)
    has_haze = rng.random() < (0.55 if month in (3, 4, 10, 11) else 0.4)
    haze_max = rng.uniform(0.15, 1.4)
    haze_extent = rng.uniform(0.3, 1.0)
    haze_bg = rng.uniform(0.0, 0.06)
    cloud_height = rng.uniform(1000.0, 3000.0)
    valid = footprint(shape, rng, partial)

    # --- fields -------------------------------------------------------------------------
    cn = smooth_field(rng, shape, factor=f, beta=2.6)
    if cover < 0.005:
        alpha = np.zeros(shape, np.float32)
    else:
        thr = float(np.quantile(cn[:: f * 2, :: f * 2], 1.0 - cover))
        alpha = np.clip(CLOUD_ALPHA + (cn - thr) / 0.6, 0.0, 1.0).astype(np.float32)
    cloud_bright = (1.0 + 0.12 * cn).astype(np.float32)
    del cn
    ci_src = smooth_field(rng, shape, factor=f * 2, beta=3.0)
    if has_cirrus:
        thr = float(np.quantile(ci_src[::8, ::8], 1.0 - cirrus_extent))
        cirrus = (0.05 * np.clip((ci_src - thr) / 1.0, 0.0, 1.0)).astype(np.float32)
    else:
        cirrus = np.zeros(shape, np.float32)
    del ci_src
    hz = smooth_field(rng, shape, factor=f * 2, beta=3.5)
    if has_haze:
        thr = float(np.quantile(hz[::8, ::8], 1.0 - haze_extent))
        top = float(hz.max())
        ramp = np.clip((hz - thr) / max(top - thr, 1e-6), 0.0, 1.0)
        haze = (haze_bg + haze_max * np.sqrt(ramp)).astype(np.float32)
    else:
        haze = np.full(shape, haze_bg, np.float32)
    del hz
    dist = cloud_height / float(np.tan(np.deg2rad(sun_elevation)))
    az = np.deg2rad(sun_azimuth)
    drow = round(float(np.cos(az)) * dist / res)
    dcol = round(-float(np.sin(az)) * dist / res)
    shadow = np.clip(shift(alpha, drow, dcol) * 1.5, 0.0, 1.0)
    shadow[alpha > CLOUD_ALPHA] = 0.0

    # --- bands ---------------------------------------------------------------------------
    surf = surface(land, phen, date, flood_active)
    dn: dict[str, np.ndarray] = {}
    clear: dict[str, np.ndarray] = {}
    valid20 = block_mean(valid) > 0.999
    ndvi_parts: dict[str, np.ndarray] = {}

    def prepared(
        sh: np.ndarray, hz_: np.ndarray, ci: np.ndarray, al: np.ndarray, cb: np.ndarray
    ) -> tuple[np.ndarray, ...]:
        dark = 1.0 - np.float32(0.7) * sh
        return dark, hz_, ci, 1.0 - al, al * cb

    fields10 = prepared(shadow, haze, cirrus, alpha, cloud_bright)
    fields20 = prepared(*(block_mean(a) for a in (shadow, haze, cirrus, alpha, cloud_bright)))
    noise = rng.standard_normal((shape[0] + 32, shape[1] + 32), dtype=np.float32)
    noise *= np.float32(0.002)
    for b, name in enumerate(BANDS):
        j = reflectance(surf, b)
        if name in BANDS_10M:
            clear[name] = np.clip(np.rint(j * 10000.0), 0, 65535).astype(np.uint16)
            dark, hz_, ci, opaque, cloudy = fields10
        else:
            j = block_mean(j)
            dark, hz_, ci, opaque, cloudy = fields20
        if name in ("B04", "B8A"):
            ndvi_parts[name] = j.copy() if j.shape != shape else block_mean(j)
        # I = (J (1 - 0.7 shadow) t + A (1 - t) + cirrus) (1 - alpha) + alpha cloud
        img = j
        img *= dark
        t = np.multiply(hz_, np.float32(-BETA[b]))
        np.exp(t, out=t)
        img *= t
        t *= np.float32(-AIRLIGHT[b])
        t += np.float32(AIRLIGHT[b])
        img += t
        np.multiply(ci, np.float32(CIRRUS_SPECTRUM[b]), out=t)
        img += t
        img *= opaque
        np.multiply(cloudy, np.float32(CLOUD[b]), out=t)
        img += t
        h, w = img.shape
        img += noise[b : b + h, 2 * b : 2 * b + w]
        dn[name] = encode_dn(img, valid if name in BANDS_10M else valid20)
        del j, t, img

    # --- truth and SCL -------------------------------------------------------------------
    cc = np.full(shape, CloudClass.CLEAR, np.uint8)
    cc[shadow > SHADOW_MIN] = CloudClass.SHADOW
    cc[cirrus > CIRRUS_MIN] = CloudClass.CIRRUS
    cc[alpha > CLOUD_ALPHA] = CloudClass.CLOUD
    cc[~valid] = CloudClass.NODATA

    a20, ci20, sh20 = block_mean(alpha), block_mean(cirrus), block_mean(shadow)
    r20, n20 = ndvi_parts["B04"], ndvi_parts["B8A"]
    ndvi20 = (n20 - r20) / np.maximum(n20 + r20, 1e-6)
    water20 = block_mean(surf.water) > 0.5
    scl = np.full(a20.shape, SCL_NOT_VEGETATED, np.uint8)
    scl[ndvi20 > 0.4] = SCL_VEGETATION
    scl[water20] = SCL_WATER
    scl[sh20 > SHADOW_MIN] = SCL_CLOUD_SHADOW
    scl[ci20 > CIRRUS_MIN] = SCL_CIRRUS
    scl[a20 > CLOUD_ALPHA] = SCL_CLOUD_MEDIUM
    scl[a20 > 0.6] = SCL_CLOUD_HIGH
    scl[~valid20] = SCL_NODATA
    counts = np.bincount(scl.ravel(), minlength=12).astype(np.float64)
    n_valid = max(float(counts[1:].sum()), 1.0)
    pct = 100.0 * counts / n_valid
    stats = {
        "eo:cloud_cover": round(float(pct[8] + pct[9] + pct[10]), 4),
        "s2:nodata_pixel_percentage": round(100.0 * float(counts[0]) / scl.size, 4),
        "s2:cloud_shadow_percentage": round(float(pct[3]), 4),
        "s2:vegetation_percentage": round(float(pct[4]), 4),
        "s2:not_vegetated_percentage": round(float(pct[5]), 4),
        "s2:water_percentage": round(float(pct[6]), 4),
        "s2:medium_proba_clouds_percentage": round(float(pct[8]), 4),
        "s2:high_proba_clouds_percentage": round(float(pct[9]), 4),
        "s2:thin_cirrus_percentage": round(float(pct[10]), 4),
        "s2:unclassified_percentage": 0.0,
        "s2:snow_ice_percentage": 0.0,
        "s2:dark_features_percentage": 0.0,
        "s2:saturated_defective_pixel_percentage": 0.0,
        "haze_max_d": round(float(haze.max()), 4),
    }
    return S2Scene(dn=dn, scl=scl, cloud_class=cc, haze=haze, clear=clear, valid=valid, stats=stats)
