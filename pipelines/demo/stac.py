"""STAC items and collections shaped like Earth Search v1 (S2 L2A, DEM), Planetary Computer
(S1 RTC) and ASF's Global HAND, with absolute asset hrefs under the archive root. Plain dicts,
no I/O."""

from __future__ import annotations

import datetime as dt
import math
from typing import Any

from pipelines.demo.optical import BANDS_10M, BANDS_20M

S2 = "sentinel-2-l2a"
S1 = "sentinel-1-rtc"
DEM = "cop-dem-glo-30"
#: Height above nearest drainage from the DEM (the id of ASF's Global HAND from GLO-30).
HAND = "glo-30-hand"
COG = "image/tiff; application=geotiff; profile=cloud-optimized"
LICENSE_HREF = "https://sentinel.esa.int/documents/247904/690755/Sentinel_Data_Legal_Notice"

#: S2 band -> (asset key, title, common name, centre um, fwhm um, gsd m).
S2_ASSETS: dict[str, tuple[str, str, str, float, float, int]] = {
    "B02": ("blue", "Blue (band 2) - 10m", "blue", 0.49, 0.098, 10),
    "B03": ("green", "Green (band 3) - 10m", "green", 0.56, 0.045, 10),
    "B04": ("red", "Red (band 4) - 10m", "red", 0.665, 0.038, 10),
    "B08": ("nir", "NIR 1 (band 8) - 10m", "nir", 0.842, 0.145, 10),
    "B05": ("rededge1", "Red edge 1 (band 5) - 20m", "rededge", 0.704, 0.019, 20),
    "B06": ("rededge2", "Red edge 2 (band 6) - 20m", "rededge", 0.74, 0.018, 20),
    "B07": ("rededge3", "Red edge 3 (band 7) - 20m", "rededge", 0.783, 0.028, 20),
    "B8A": ("nir08", "NIR 2 (band 8A) - 20m", "nir08", 0.865, 0.033, 20),
    "B11": ("swir16", "SWIR 1 (band 11) - 20m", "swir16", 1.61, 0.143, 20),
    "B12": ("swir22", "SWIR 2 (band 12) - 20m", "swir22", 2.19, 0.242, 20),
}
S2_EXTENSIONS = [
    "https://stac-extensions.github.io/processing/v1.1.0/schema.json",
    "https://stac-extensions.github.io/grid/v1.0.0/schema.json",
    "https://stac-extensions.github.io/raster/v1.1.0/schema.json",
    "https://stac-extensions.github.io/view/v1.0.0/schema.json",
    "https://stac-extensions.github.io/projection/v1.1.0/schema.json",
    "https://stac-extensions.github.io/mgrs/v1.0.0/schema.json",
    "https://stac-extensions.github.io/eo/v1.1.0/schema.json",
]
S1_EXTENSIONS = [
    "https://stac-extensions.github.io/sar/v1.0.0/schema.json",
    "https://stac-extensions.github.io/sat/v1.0.0/schema.json",
    "https://stac-extensions.github.io/projection/v1.1.0/schema.json",
    "https://stac-extensions.github.io/raster/v1.1.0/schema.json",
]
DEM_EXTENSIONS = ["https://stac-extensions.github.io/projection/v1.1.0/schema.json"]


def iso(t: dt.datetime) -> str:
    """ISO 8601 UTC with microseconds and a trailing Z."""
    return t.strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def solar_position(t: dt.datetime, lat: float, lon: float) -> tuple[float, float]:
    """Sun (azimuth from north clockwise, elevation) in degrees at UTC ``t`` (NOAA formulas)."""
    doy = t.timetuple().tm_yday
    hour = t.hour + t.minute / 60 + t.second / 3600
    g = 2 * math.pi / 365 * (doy - 1 + (hour - 12) / 24)
    eqt = 229.18 * (
        0.000075
        + 0.001868 * math.cos(g)
        - 0.032077 * math.sin(g)
        - 0.014615 * math.cos(2 * g)
        - 0.040849 * math.sin(2 * g)
    )
    decl = (
        0.006918
        - 0.399912 * math.cos(g)
        + 0.070257 * math.sin(g)
        - 0.006758 * math.cos(2 * g)
        + 0.000907 * math.sin(2 * g)
        - 0.002697 * math.cos(3 * g)
        + 0.00148 * math.sin(3 * g)
    )
    tst = hour * 60 + eqt + 4 * lon
    ha = math.radians(tst / 4 - 180)
    la = math.radians(lat)
    cos_z = math.sin(la) * math.sin(decl) + math.cos(la) * math.cos(decl) * math.cos(ha)
    zen = math.acos(max(-1.0, min(1.0, cos_z)))
    az = math.degrees(
        math.atan2(math.sin(ha), math.cos(ha) * math.sin(la) - math.tan(decl) * math.cos(la))
    )
    return (az + 180.0) % 360.0, 90.0 - math.degrees(zen)


def _links(root_href: str, collection: str) -> list[dict[str, str]]:
    coll = f"{root_href}/stac/collections/{collection}.json"
    return [
        {"rel": "collection", "type": "application/json", "href": coll},
        {"rel": "parent", "type": "application/json", "href": coll},
        {"rel": "license", "href": LICENSE_HREF},
    ]


def _tf(transform: Any) -> list[float]:
    return [float(v) for v in tuple(transform)[:6]]


def s2_item(
    *,
    root_href: str,
    item_id: str,
    when: dt.datetime,
    platform: str,
    epsg: int,
    mgrs_tile: str,
    shape10: tuple[int, int],
    transform10: Any,
    transform20: Any,
    geometry: dict[str, Any],
    bbox: list[float],
    sun: tuple[float, float],
    stats: dict[str, float],
    baseline: str,
    relative_orbit: int,
) -> dict[str, Any]:
    """An Earth Search v1 style ``sentinel-2-l2a`` item (assets B02-B12 and SCL as COGs)."""
    base = f"{root_href}/data/{S2}/{item_id}"
    shape20 = (shape10[0] // 2, shape10[1] // 2)
    assets: dict[str, Any] = {}
    for band in (*BANDS_10M, *BANDS_20M):
        key, title, common, centre, fwhm, gsd = S2_ASSETS[band]
        shp, tf = (shape10, transform10) if gsd == 10 else (shape20, transform20)
        assets[key] = {
            "href": f"{base}/{key}.tif",
            "type": COG,
            "title": title,
            "eo:bands": [
                {
                    "name": key,
                    "common_name": common,
                    "description": title.split(" - ")[0],
                    "center_wavelength": centre,
                    "full_width_half_max": fwhm,
                }
            ],
            "gsd": gsd,
            "proj:shape": list(shp),
            "proj:transform": _tf(tf),
            "raster:bands": [
                {
                    "nodata": 0,
                    "data_type": "uint16",
                    "bits_per_sample": 15,
                    "spatial_resolution": gsd,
                    "scale": 0.0001,
                    "offset": -0.1,
                }
            ],
            "roles": ["data", "reflectance"],
        }
    assets["scl"] = {
        "href": f"{base}/scl.tif",
        "type": COG,
        "title": "Scene classification map (SCL)",
        "proj:shape": list(shape20),
        "proj:transform": _tf(transform20),
        "raster:bands": [{"nodata": 0, "data_type": "uint8", "spatial_resolution": 20}],
        "roles": ["data", "reflectance"],
    }
    zone, band_letter, square = mgrs_tile[:2], mgrs_tile[2], mgrs_tile[3:]
    gen = when + dt.timedelta(hours=3, minutes=12)
    stamp = when.strftime("%Y%m%dT%H%M%S")
    gstamp = gen.strftime("%Y%m%dT%H%M%S")
    short = platform[-1].upper()
    abs_orbit = 30000 + (when.date() - dt.date(2021, 1, 1)).days * 14
    props: dict[str, Any] = {
        "created": iso(gen),
        "platform": platform,
        "constellation": "sentinel-2",
        "instruments": ["msi"],
        "eo:cloud_cover": stats["eo:cloud_cover"],
        "proj:epsg": epsg,
        "mgrs:utm_zone": int(zone),
        "mgrs:latitude_band": band_letter,
        "mgrs:grid_square": square,
        "grid:code": f"MGRS-{mgrs_tile}",
        "view:sun_azimuth": round(sun[0], 6),
        "view:sun_elevation": round(sun[1], 6),
        "s2:degraded_msi_data_percentage": 0.0,
    }
    for key in (
        "s2:nodata_pixel_percentage",
        "s2:saturated_defective_pixel_percentage",
        "s2:dark_features_percentage",
        "s2:cloud_shadow_percentage",
        "s2:vegetation_percentage",
        "s2:not_vegetated_percentage",
        "s2:water_percentage",
        "s2:unclassified_percentage",
        "s2:medium_proba_clouds_percentage",
        "s2:high_proba_clouds_percentage",
        "s2:thin_cirrus_percentage",
        "s2:snow_ice_percentage",
    ):
        props[key] = stats[key]
    props.update(
        {
            "s2:product_type": "S2MSI2A",
            "s2:processing_baseline": baseline,
            "s2:product_uri": (
                f"S2{short}_MSIL2A_{stamp}_N{baseline.replace('.', '')}_R{relative_orbit:03d}"
                f"_T{mgrs_tile}_{gstamp}.SAFE"
            ),
            "s2:generation_time": iso(gen),
            "s2:datatake_id": f"GS2{short}_{stamp}_{abs_orbit:06d}_N{baseline}",
            "s2:datatake_type": "INS-NOBS",
            "s2:datastrip_id": (f"S2{short}_OPER_MSI_L2A_DS_2APS_{gstamp}_S{stamp}_N{baseline}"),
            "s2:granule_id": (
                f"S2{short}_OPER_MSI_L2A_TL_2APS_{gstamp}_A{abs_orbit:06d}_T{mgrs_tile}_N{baseline}"
            ),
            "s2:reflectance_conversion_factor": round(
                1.0 / (1 - 0.01673 * math.cos(0.0172 * (when.timetuple().tm_yday - 4))) ** 2, 8
            ),
            "datetime": iso(when),
            "s2:sequence": "0",
            # The pixels keep the -1000 DN offset (optical.encode_dn), as ESA's own products and
            # Earth Search's Collection 1: the declared raster offset applies.
            "earthsearch:boa_offset_applied": False,
            "processing:software": {"terrapipe-demo-archive": "1"},
            "updated": iso(gen),
        }
    )
    return {
        "type": "Feature",
        "stac_version": "1.0.0",
        "id": item_id,
        "properties": props,
        "geometry": geometry,
        "links": _links(root_href, S2),
        "assets": assets,
        "bbox": bbox,
        "stac_extensions": S2_EXTENSIONS,
        "collection": S2,
    }


def s1_item(
    *,
    root_href: str,
    item_id: str,
    start: dt.datetime,
    end: dt.datetime,
    epsg: int,
    shape: tuple[int, int],
    transform: Any,
    proj_bbox: list[float],
    geometry: dict[str, Any],
    bbox: list[float],
    orbit_state: str,
    abs_orbit: int,
    rel_orbit: int,
    datatake: int,
) -> dict[str, Any]:
    """A Planetary Computer style ``sentinel-1-rtc`` item (assets vv, vh: float32 gamma0)."""
    base = f"{root_href}/data/{S1}/{item_id}"
    mid = start + (end - start) / 2
    assets = {}
    for pol, title in (
        ("vh", "VH: vertical transmit, horizontal receive"),
        ("vv", "VV: vertical transmit, vertical receive"),
    ):
        assets[pol] = {
            "href": f"{base}/{pol}.tif",
            "type": COG,
            "roles": ["data"],
            "title": title,
            "description": (
                "Terrain-corrected gamma naught values of signal transmitted with vertical "
                f"polarization and received with {'horizontal' if pol == 'vh' else 'vertical'} "
                "polarization with radiometric terrain correction applied."
            ),
            "raster:bands": [
                {"nodata": -32768, "data_type": "float32", "spatial_resolution": 10.0}
            ],
        }
    props = {
        "datetime": iso(mid),
        "platform": "SENTINEL-1A",
        "s1:shape": [shape[1], shape[0]],
        "proj:bbox": proj_bbox,
        "proj:epsg": epsg,
        "proj:shape": list(shape),
        "end_datetime": iso(end),
        "constellation": "Sentinel-1",
        "s1:resolution": "high",
        "proj:transform": [*_tf(transform), 0.0, 0.0, 1.0],
        "s1:datatake_id": str(datatake),
        "start_datetime": iso(start),
        "s1:orbit_source": "RESORB",
        "s1:slice_number": "5",
        "s1:total_slices": "12",
        "sar:looks_range": 5,
        "sat:orbit_state": orbit_state,
        "sar:product_type": "GRD",
        "sar:looks_azimuth": 1,
        "sar:polarizations": ["VV", "VH"],
        "sar:frequency_band": "C",
        "sat:absolute_orbit": abs_orbit,
        "sat:relative_orbit": rel_orbit,
        "s1:processing_level": "1",
        "sar:instrument_mode": "IW",
        "sar:center_frequency": 5.405,
        "sar:resolution_range": 20,
        "s1:product_timeliness": "Fast-24h",
        "sar:resolution_azimuth": 22,
        "sar:pixel_spacing_range": 10,
        "sar:observation_direction": "right",
        "sar:pixel_spacing_azimuth": 10,
        "sar:looks_equivalent_number": 4.4,
        "s1:instrument_configuration_ID": "7",
        "sat:platform_international_designator": "2014-016A",
    }
    return {
        "id": item_id,
        "bbox": bbox,
        "type": "Feature",
        "links": _links(root_href, S1),
        "assets": assets,
        "geometry": geometry,
        "collection": S1,
        "properties": props,
        "stac_extensions": S1_EXTENSIONS,
        "stac_version": "1.0.0",
    }


def dem_item(
    *,
    root_href: str,
    item_id: str,
    shape: tuple[int, int],
    transform: Any,
    geometry: dict[str, Any],
    bbox: list[float],
    collection: str = DEM,
) -> dict[str, Any]:
    """A ``cop-dem-glo-30`` item (asset ``data``: float32 heights, EPSG:4326, 1 arcsec), or
    with ``collection`` HAND a ``glo-30-hand`` item of the same grid (heights above nearest
    drainage)."""
    return {
        "type": "Feature",
        "stac_version": "1.0.0",
        "id": item_id,
        "properties": {
            "gsd": 30,
            "datetime": "2021-04-22T00:00:00Z",
            "platform": "TanDEM-X",
            "proj:epsg": 4326,
            "proj:shape": list(shape),
            "proj:transform": _tf(transform),
        },
        "geometry": geometry,
        "links": _links(root_href, collection),
        "assets": {
            "data": {
                "href": f"{root_href}/data/{collection}/{item_id}/data.tif",
                "title": item_id.replace("Copernicus_DSM_COG_10_", "").rsplit("_", 1)[0],
                "type": COG,
                "roles": ["data"],
                "raster:bands": [
                    {"data_type": "float32", "spatial_resolution": 30, "unit": "metre"}
                ],
            }
        },
        "bbox": bbox,
        "stac_extensions": DEM_EXTENSIONS,
        "collection": collection,
    }


_COLLECTION_TEXT = {
    S2: ("Sentinel-2 Level-2A", "Sentinel-2 L2A surface reflectance (demo province archive)"),
    S1: (
        "Sentinel 1 Radiometrically Terrain Corrected (RTC)",
        "Sentinel-1 IW GRD gamma0 with radiometric terrain correction (demo province archive)",
    ),
    DEM: ("Copernicus DEM GLO-30", "Copernicus DEM 30 m (demo province archive)"),
    HAND: (
        "Height Above Nearest Drainage (HAND) from GLO-30",
        "Height above nearest drainage (m) of the demo DEM, computed over the whole province "
        "as ASF's Global HAND is from GLO-30 (demo province archive)",
    ),
}


def collection(
    cid: str, *, root_href: str, bbox: list[float], interval: list[str | None]
) -> dict[str, Any]:
    """A STAC Collection for ``cid`` covering ``bbox`` (WGS84) over ``interval``."""
    title, description = _COLLECTION_TEXT[cid]
    item_assets: dict[str, Any]
    if cid == S2:
        item_assets = {
            S2_ASSETS[b][0]: {"type": COG, "title": S2_ASSETS[b][1], "roles": ["data"]}
            for b in (*BANDS_10M, *BANDS_20M)
        }
        item_assets["scl"] = {"type": COG, "title": "Scene classification map (SCL)"}
    elif cid == S1:
        item_assets = {p: {"type": COG, "roles": ["data"]} for p in ("vv", "vh")}
    else:
        item_assets = {"data": {"type": COG, "roles": ["data"]}}
    return {
        "type": "Collection",
        "id": cid,
        "stac_version": "1.0.0",
        "title": title,
        "description": description,
        "links": [
            {
                "rel": "self",
                "type": "application/json",
                "href": f"{root_href}/stac/collections/{cid}.json",
            },
            {
                "rel": "items",
                "type": "application/geo+json",
                "href": f"{root_href}/stac/items/{cid}.json",
            },
            {"rel": "license", "href": LICENSE_HREF},
        ],
        "stac_extensions": ["https://stac-extensions.github.io/item-assets/v1.0.0/schema.json"],
        "item_assets": item_assets,
        "extent": {"spatial": {"bbox": [bbox]}, "temporal": {"interval": [interval]}},
        "license": "proprietary",
        "keywords": ["terrapipe", "demo", "synthetic"],
        "providers": [{"name": "terrapipe demo archive", "roles": ["producer", "host"]}],
    }
