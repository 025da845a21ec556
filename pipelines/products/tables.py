"""Plain tables (pandas DataFrames) as Parquet files under a store URL, local or object storage.

The index is kept (the season's parcel tables are indexed by ``parcel_id``). GeoDataFrames go
through the GeoParquet writer of the parcel polygons (``pipelines.agri.polygons``) instead.
A table sorted by a column and written in row groups (``row_group_rows``) can be read a range of
that column at a time (:class:`RowRange`): only the row groups whose statistics overlap it are
fetched.
"""

from __future__ import annotations

import io
from dataclasses import dataclass

import pandas as pd

from pipelines import storage


@dataclass(frozen=True)
class RowRange:
    """The rows of a table whose ``column`` (or index of that name) is in [start, stop)."""

    column: str
    start: int
    stop: int


def write_table(frame: pd.DataFrame, url: str, row_group_rows: int | None = None) -> int:
    """Write ``frame`` (index included) as Parquet to ``url``, in row groups of at most
    ``row_group_rows`` rows (None: Parquet's default, one group up to a million rows); returns
    the bytes written."""
    buf = io.BytesIO()
    frame.to_parquet(buf, row_group_size=row_group_rows)
    storage.write_bytes(url, buf.getvalue())
    return buf.tell()


def read_table(url: str, rows: RowRange | None = None) -> pd.DataFrame:
    """The Parquet table at ``url`` (FileNotFoundError when there is none); with ``rows``, only
    the rows in that range, read from the row groups that may hold them (the file's footer
    first, then those groups: a table sorted by the column reads a small part of the file)."""
    if rows is None:
        return pd.read_parquet(io.BytesIO(storage.read_bytes(url)))
    fs, path = storage.filesystem(url)
    filters = [(rows.column, ">=", rows.start), (rows.column, "<", rows.stop)]
    with storage.transient_io("reading", url), fs.open(path, "rb") as f:
        return pd.read_parquet(f, filters=filters)
