"""Plain tables (pandas DataFrames) as Parquet files under a store URL, local or object storage.

The index is kept (the season's parcel tables are indexed by ``parcel_id``). GeoDataFrames go
through the GeoParquet writer of the parcel polygons (``pipelines.agri.polygons``) instead.
"""

from __future__ import annotations

import io

import pandas as pd

from pipelines import storage


def write_table(frame: pd.DataFrame, url: str) -> int:
    """Write ``frame`` (index included) as Parquet to ``url``; returns the bytes written."""
    buf = io.BytesIO()
    frame.to_parquet(buf)
    storage.write_bytes(url, buf.getvalue())
    return buf.tell()


def read_table(url: str) -> pd.DataFrame:
    """The Parquet table at ``url`` (FileNotFoundError when there is none)."""
    return pd.read_parquet(io.BytesIO(storage.read_bytes(url)))
