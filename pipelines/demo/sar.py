"""Sentinel-1 RTC scenes (pure numpy): gamma0 VV/VH per class and growth stage, flood, speckle.

Backscatter is modelled in dB per pixel, converted to linear gamma0 and multiplied by gamma
distributed speckle (mean 1, ENL 4.4 like the Planetary Computer RTC product). Values (dB):
open water -22 VV / -29 VH; crops from bare soil (-14 VV) towards a crop-specific canopy level
(-8.5 to -11 VV) with the vegetation fraction; flooded rice paddies dark after transplanting and
brightening with the canopy (double bounce); urban 0 dB VV; flooded vegetation and buildings
bright in VV (double bounce); flooded fields of low crops read as open water, tall corn at
the shallow flood edge as flooded vegetation.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass

import numpy as np

from pipelines.classes import FloodClass, LandClass
from pipelines.demo.landscape import Landscape
from pipelines.demo.noise import smooth_field
from pipelines.demo.optical import footprint, surface
from pipelines.demo.phenology import Phenology, rice_flooded

ENL = 4.4
NODATA = -32768.0
#: Canopy-level (VV, VH) dB per land class when fully vegetated.
CANOPY_DB = {
    LandClass.WHEAT: (-11.0, -17.0),
    LandClass.CORN: (-8.5, -13.5),
    LandClass.RICE: (-9.0, -14.5),
    LandClass.COTTON: (-9.5, -15.0),
    LandClass.SOYBEAN: (-9.5, -15.0),
    LandClass.GRASSLAND: (-11.0, -18.0),
    LandClass.FOREST: (-7.5, -12.5),
}
SOIL_DB = (-14.0, -23.0)


@dataclass
class S1Scene:
    """One RTC acquisition: linear gamma0 (float32, nodata -32768) and the footprint."""

    vv: np.ndarray
    vh: np.ndarray
    valid: np.ndarray


def backscatter_db(
    land: Landscape,
    phen: Phenology,
    date: dt.date,
    rng: np.random.Generator,
    flood_active: bool = False,
) -> tuple[np.ndarray, np.ndarray]:
    """Noise-free (VV, VH) gamma0 in dB on ``date``, float32 (y, x)."""
    shape = land.landcover.shape
    lc = land.landcover
    f = 4 if shape[0] >= 512 else 2
    wet = rng.uniform(0.0, 2.5)  # soil moisture after rain, dB
    wind = smooth_field(rng, shape, factor=f * 2, beta=3.0)
    surf = surface(land, phen, date, flood_active=False)
    fc = surf.fc
    vv_c = np.full(256, SOIL_DB[0], np.float32)
    vh_c = np.full(256, SOIL_DB[1], np.float32)
    for code, (a, b) in CANOPY_DB.items():
        vv_c[int(code)], vh_c[int(code)] = a, b
    vv = (1.0 - fc) * (SOIL_DB[0] + wet) + fc * vv_c[lc]
    vh = (1.0 - fc) * (SOIL_DB[1] + wet) + fc * vh_c[lc]
    doy = float(date.timetuple().tm_yday)
    paddy = rice_flooded(phen, land, date.year, doy)
    paddy[0] = False
    pm = paddy[land.parcels]
    vv[pm] = -21.0 + 17.0 * fc[pm]
    vh[pm] = -27.0 + 12.0 * fc[pm]
    urban = lc == LandClass.URBAN
    vv[urban] = 0.0 + 60.0 * (land.texture[urban] - 1.0)
    vh[urban] = -9.0 + 40.0 * (land.texture[urban] - 1.0)
    water = (lc == LandClass.WATER) | (lc == LandClass.RIVER)
    vv[water] = -22.0 + 1.2 * wind[water]
    vh[water] = -29.0 + 0.8 * wind[water]
    if flood_active:
        fl = land.flood == FloodClass.FLOODED
        shallow = land.hand > np.median(land.hand[fl]) if fl.any() else fl
        tall = fl & ((lc == LandClass.FOREST) | ((lc == LandClass.CORN) & (fc > 0.6) & shallow))
        built = fl & urban
        open_ = fl & ~tall & ~built
        vv[open_] = -21.0 + 1.2 * wind[open_]
        vh[open_] = -28.0 + 0.8 * wind[open_]
        vv[tall] = -4.0
        vh[tall] = -15.0
        vv[built] += 3.0
    return vv.astype(np.float32), vh.astype(np.float32)


def _quantize(x: np.ndarray) -> np.ndarray:
    """Zero the 11 low mantissa bits (relative error < 1.3e-4, ~0.0005 dB): compresses well."""
    bits = x.view(np.uint32) & np.uint32(0xFFFFF800)
    return bits.view(np.float32)


def s1_scene(
    land: Landscape,
    phen: Phenology,
    date: dt.date,
    rng: np.random.Generator,
    *,
    flood_active: bool = False,
    partial: bool = False,
) -> S1Scene:
    """Generate one RTC acquisition on ``date`` (all draws from ``rng``)."""
    shape = land.landcover.shape
    valid = footprint(shape, rng, partial)
    vv_db, vh_db = backscatter_db(land, phen, date, rng, flood_active)
    out = []
    for db in (vv_db, vh_db):
        lin = np.power(np.float32(10.0), db / np.float32(10.0)).astype(np.float32)
        lin *= rng.standard_gamma(ENL, size=shape, dtype=np.float32) / np.float32(ENL)
        lin = _quantize(lin)
        lin[~valid] = NODATA
        out.append(lin)
    return S1Scene(vv=out[0], vh=out[1], valid=valid)
