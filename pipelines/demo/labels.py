"""A field survey of a demo archive: labelled points inside its truth parcels, as a user would
collect them for the few-shot crop model (within the label budget of :mod:`pipelines.agri.labels`).
"""

from __future__ import annotations

from typing import Any

import numpy as np

from pipelines.agri.labels import MIN_PER_CROP, label_budget
from pipelines.errors import BadInputError


def sample_demo_labels(
    archive: str, per_crop: int = MIN_PER_CROP, seed: int = 0, min_area_ha: float = 1.0
) -> dict[str, Any]:
    """A field survey of a demo archive: ``per_crop`` points per crop inside random truth parcels
    of at least ``min_area_ha``, as a GeoJSON FeatureCollection (WGS84; properties crop,
    parcel_id). Raises BadInputError when the survey would exceed the label budget."""
    import geopandas as gpd
    from shapely.geometry import Point

    from pipelines import storage
    from pipelines.demo import open_archive_info

    if isinstance(per_crop, bool) or not isinstance(per_crop, int) or per_crop < MIN_PER_CROP:
        raise BadInputError("per_crop", per_crop, f"an integer >= {MIN_PER_CROP}")
    info = open_archive_info(archive)
    gdf = gpd.read_file(storage.join(archive, info["truth"]["parcel_polygons"]))
    crops = sorted(set(gdf["crop"]), key=lambda c: int(gdf.loc[gdf.crop == c, "crop_code"].iloc[0]))
    area_km2 = info["width"] * info["height"] * info["resolution_m"] ** 2 / 1e6
    budget = label_budget(area_km2, len(crops))
    if per_crop * len(crops) > budget:
        raise BadInputError(
            "per_crop",
            per_crop,
            f"at most {budget // len(crops)} labels per crop: the budget for {area_km2:.0f} km2 "
            f"is {budget} labels",
        )
    rng = np.random.default_rng(seed)
    feats = []
    metric = gdf.to_crs(info["crs"])
    for crop in crops:
        pool = metric[(metric.crop == crop) & (metric.area_ha >= min_area_ha)]
        if len(pool) < per_crop:
            pool = metric[metric.crop == crop]
        pick = pool.iloc[rng.choice(len(pool), size=min(per_crop, len(pool)), replace=False)]
        pts = gpd.GeoSeries(
            [
                g.buffer(-10.0).representative_point()
                if not g.buffer(-10.0).is_empty
                else g.representative_point()
                for g in pick.geometry
            ],
            crs=info["crs"],
        ).to_crs("EPSG:4326")
        for pid, pt in zip(pick["parcel_id"], pts, strict=True):
            assert isinstance(pt, Point)
            feats.append(
                {
                    "type": "Feature",
                    "properties": {"crop": crop, "parcel_id": int(pid)},
                    "geometry": {"type": "Point", "coordinates": [pt.x, pt.y]},
                }
            )
    return {"type": "FeatureCollection", "features": feats}
