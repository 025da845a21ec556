"""The demo province archive: a synthetic North China Plain province served like Earth Search /
Planetary Computer (S2 L2A, S1 RTC, Copernicus DEM as COGs with STAC items), with truth layers.

Public API: :func:`build_archive`, the readers :func:`open_archive_info`, :func:`archive_items`
and :func:`archive_geobox`, :func:`demo_archive_url`, :class:`ArchiveInfo`, ``SIZES``.
The generators (``landscape``, ``phenology``, ``optical``, ``sar``) are pure numpy functions;
``writers`` and ``build`` do the I/O.
"""

from __future__ import annotations

from pipelines.demo.build import (
    ArchiveInfo,
    archive_geobox,
    archive_items,
    build_archive,
    default_out,
    demo_archive_url,
    open_archive_info,
)
from pipelines.demo.spec import SIZES, SizeSpec, get_size

__all__ = [
    "SIZES",
    "ArchiveInfo",
    "SizeSpec",
    "archive_geobox",
    "archive_items",
    "build_archive",
    "default_out",
    "demo_archive_url",
    "get_size",
    "open_archive_info",
]
