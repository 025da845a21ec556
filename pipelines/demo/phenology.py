"""Crop calendars, NDVI curves per parcel and season, and county yields (pure numpy).

Day of year (DOY) is counted from 1 January of the season year. Winter wheat of season Y is sown
in October of Y-1, greens up in March, peaks mid-April and is harvested early June (North China
Plain calendar); corn and soybean are summer crops (sown mid-June, peak August); cotton is sown
late April and peaks late July-August; rice is transplanted into flooded paddies in June and peaks
late August.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from pipelines.classes import CROPS, LandClass
from pipelines.demo.landscape import Landscape


@dataclass(frozen=True)
class CropCalendar:
    """NDVI curve of one crop: asymmetric Gaussian between sowing and harvest."""

    sow: float
    """DOY of sowing / transplanting (before it the field is bare)."""
    peak: float
    """DOY of peak greenness."""
    left: float
    """Rise width, days."""
    right: float
    """Decline width, days."""
    harvest: float
    """DOY of harvest (after it the field is stubble)."""
    peak_ndvi: float
    """Mean NDVI at peak."""
    yield_t_ha: float
    """Mean yield, t/ha (lint for cotton)."""


BASE_NDVI = 0.16
CALENDARS: dict[LandClass, CropCalendar] = {
    LandClass.WHEAT: CropCalendar(-80, 108, 48, 22, 158, 0.84, 6.2),
    LandClass.CORN: CropCalendar(160, 220, 30, 28, 272, 0.87, 6.5),
    LandClass.RICE: CropCalendar(158, 232, 34, 28, 285, 0.86, 7.8),
    LandClass.COTTON: CropCalendar(112, 214, 50, 38, 295, 0.79, 1.3),
    LandClass.SOYBEAN: CropCalendar(165, 226, 30, 25, 278, 0.84, 2.0),
}
#: Rice paddies are flooded from transplanting until the canopy closes (DOY window).
RICE_FLOOD_DOY = (150.0, 196.0)
#: Winter wheat of the next season: sown DOY 285, NDVI ~0.35 by December.
WHEAT_AUTUMN = (300.0, 12.0, 0.20)
VIGOUR_TO_NDVI = 0.22


@dataclass
class Phenology:
    """Per-parcel, per-season phenology parameters and the county vigour behind the yields."""

    seasons: tuple[int, ...]
    """Season years; index s of the arrays is ``seasons[s]`` (one extra season at the end)."""
    shift: np.ndarray
    """Timing shift, days, float64 (n_seasons + 1, n_parcels + 1)."""
    peak: np.ndarray
    """Peak NDVI, float64 (n_seasons + 1, n_parcels + 1)."""
    soil: np.ndarray
    """Soil brightness factor per parcel (~0.8-1.2), float64 (n_parcels + 1,)."""
    vigour: np.ndarray
    """Relative season vigour per (season, county, crop), float64 (n_seasons + 1, n_c + 1, 5)."""


def build_phenology(land: Landscape, seasons: tuple[int, ...], seed: int) -> Phenology:
    """Draw the phenology parameters (deterministic from ``seed``)."""
    rng = np.random.Generator(np.random.PCG64(np.random.SeedSequence([seed, 2])))
    ns = len(seasons) + 1
    nc = land.n_counties + 1
    npar = land.n_parcels + 1
    common = rng.normal(0.0, 0.10, (ns, 1, 1))
    county = rng.normal(0.0, 0.09, (ns, nc, 1))
    crop = rng.normal(0.0, 0.07, (ns, nc, 5))
    vigour = common + county + crop
    crop_idx = np.zeros(npar, np.int64)
    codes = [int(c) for c in CROPS]
    for i, c in enumerate(codes):
        crop_idx[land.parcel_crop == c] = i
    base_peak = np.array([CALENDARS[LandClass(c)].peak_ndvi for c in codes])[crop_idx]
    v = vigour[:, land.parcel_county.astype(np.int64), crop_idx]
    peak = base_peak[None, :] + VIGOUR_TO_NDVI * v + rng.normal(0.0, 0.025, (ns, npar))
    peak = np.clip(peak, 0.45, 0.93)
    shift = rng.normal(0.0, 4.0, (ns, 1)) + rng.normal(0.0, 5.0, (ns, npar))
    soil = rng.uniform(0.8, 1.2, npar)
    return Phenology(tuple(seasons), shift, peak, soil, vigour)


def _curve(doy: np.ndarray | float, cal: CropCalendar, peak: np.ndarray) -> np.ndarray:
    d = np.asarray(doy, dtype=np.float64)
    width = np.where(d < cal.peak, cal.left, cal.right)
    g = np.exp(-(((d - cal.peak) / width) ** 2))
    g = g / (1.0 + np.exp(-(d - cal.sow) / 5.0)) / (1.0 + np.exp((d - cal.harvest) / 3.0))
    return BASE_NDVI + (peak - BASE_NDVI) * g


def parcel_ndvi(land: Landscape, phen: Phenology, year: int, doy: float) -> np.ndarray:
    """NDVI of every parcel on day ``doy`` of ``year``, float64 (n_parcels + 1,)."""
    s = _season_index(phen, year)
    out = np.full(land.n_parcels + 1, BASE_NDVI)
    for code in CROPS:
        sel = land.parcel_crop == code
        cal = CALENDARS[code]
        d = doy - phen.shift[s, sel]
        out[sel] = _curve(d, cal, phen.peak[s, sel])
        if code == LandClass.WHEAT:  # next season's winter wheat emerging in autumn
            t0, w, amp = WHEAT_AUTUMN
            nxt = min(s + 1, phen.shift.shape[0] - 1)
            out[sel] += amp / (1.0 + np.exp(-(doy - phen.shift[nxt, sel] - t0) / w))
    return out


def rice_flooded(phen: Phenology, land: Landscape, year: int, doy: float) -> np.ndarray:
    """True per parcel where a rice paddy stands flooded on ``doy`` (bool (n_parcels + 1,))."""
    s = _season_index(phen, year)
    d = doy - phen.shift[s]
    return (land.parcel_crop == LandClass.RICE) & (d >= RICE_FLOOD_DOY[0]) & (d < RICE_FLOOD_DOY[1])


def class_ndvi(code: LandClass, doy: float) -> float:
    """NDVI of the non-crop vegetated classes on ``doy`` (forest, grassland, urban)."""
    if code == LandClass.FOREST:
        return 0.45 + 0.40 * float(np.exp(-(((doy - 200.0) / 75.0) ** 2)))
    if code == LandClass.GRASSLAND:
        return 0.22 + 0.45 * float(np.exp(-(((doy - 205.0) / 60.0) ** 2)))
    if code == LandClass.URBAN:
        return 0.12 + 0.08 * float(np.exp(-(((doy - 200.0) / 70.0) ** 2)))
    return 0.0


def _season_index(phen: Phenology, year: int) -> int:
    if year in phen.seasons:
        return phen.seasons.index(year)
    return len(phen.seasons) if year > phen.seasons[-1] else 0


def county_yields(
    land: Landscape, phen: Phenology, seed: int
) -> list[tuple[int, int, str, float, str]]:
    """Rows (season, county_id, crop, yield, unit) with yield in t/ha (cotton: lint).

    yield = mean x (1 + 1.2 % per year trend) x (1 + vigour) x (1 + noise 4 %): the vigour is
    the same term that raises the season's peak NDVI of the county's parcels, so yields are
    learnable from the imagery. Crops absent from a county get no row.
    """
    rng = np.random.Generator(np.random.PCG64(np.random.SeedSequence([seed, 3])))
    rows: list[tuple[int, int, str, float, str]] = []
    codes = [int(c) for c in CROPS]
    present = np.zeros((land.n_counties + 1, 5), bool)
    for i, c in enumerate(codes):
        present[land.parcel_county[land.parcel_crop == c], i] = True
    for s, year in enumerate(phen.seasons):
        noise = rng.normal(0.0, 0.04, (land.n_counties + 1, 5))
        for cid in range(1, land.n_counties + 1):
            for i, c in enumerate(codes):
                if not present[cid, i]:
                    continue
                cal = CALENDARS[LandClass(c)]
                trend = 1.0 + 0.012 * (year - phen.seasons[0])
                y = cal.yield_t_ha * trend * (1.0 + phen.vigour[s, cid, i]) * (1.0 + noise[cid, i])
                rows.append((year, cid, LandClass(c).name.lower(), round(float(y), 3), "t/ha"))
    return rows
