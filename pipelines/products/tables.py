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
from typing import Any

import numpy as np
import pandas as pd

from pipelines import storage

#: Bytes an object store fetches at a time while a range of a table is read: about a row group
#: of the season's tables (16,384 rows of a few columns), so that the footer and each group
#: needed take a request or two, not the object store file's default read-ahead (s3fs: 50 MiB).
RANGE_BLOCK_BYTES = 2**20


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
    the rows in that range, read from the row groups whose statistics may hold them (the file's
    footer first, then those groups: a table sorted by the column reads a small part of the
    file). The groups are read on the calling thread through ``pyarrow.parquet.ParquetFile``,
    not pyarrow's dataset scanner, whose background reads call back into the Python file object
    from Arrow's threads: those reads could outlive the call, and a garbage collection then
    crashed the process (a segmentation fault in an Arrow thread, 3 runs of 32 of
    ``tests/integration/test_bench_province.py``; apache/arrow issues 39162 and 43558)."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    if rows is None:  # Arrow's own in-memory reader: its threads never call into Python
        return pd.read_parquet(pa.BufferReader(storage.read_bytes(url)))

    fs, path = storage.filesystem(url)
    with (
        storage.transient_io("reading", url),
        fs.open(path, "rb", block_size=RANGE_BLOCK_BYTES) as f,
    ):
        parquet = pq.ParquetFile(f)
        groups = _row_groups_overlapping(parquet.metadata, rows, url)
        table = parquet.read_row_groups(groups, use_threads=False, use_pandas_metadata=True)
    frame = table.to_pandas()
    in_index = rows.column in frame.index.names
    values = frame.index.get_level_values(rows.column) if in_index else frame[rows.column]
    keep = (values >= rows.start) & (values < rows.stop)
    return frame[np.asarray(keep)]


def _row_groups_overlapping(metadata: Any, rows: RowRange, url: str) -> list[int]:
    """The row groups of a Parquet footer whose min/max of ``rows.column`` overlap the range
    (a group without statistics may hold any value: it is kept)."""
    names = [metadata.schema.column(j).path for j in range(metadata.num_columns)]
    if rows.column not in names:
        raise ValueError(f"rows.column={rows.column!r}: {url} has no such column; it has {names}")
    j = names.index(rows.column)
    groups = []
    for i in range(metadata.num_row_groups):
        stats = metadata.row_group(i).column(j).statistics
        unknown = stats is None or not stats.has_min_max
        if unknown or (stats.max >= rows.start and stats.min < rows.stop):
            groups.append(i)
    return groups
