"""Load STAC items onto a processing grid as lazy, chunked xarray (the read edge of the pipeline).

Every loader returns float32 with NaN at nodata, on exactly the pixel grid of the given odc-geo
``GeoBox`` (x/y are pixel centres in its CRS), with canonical band names whatever the catalog's
asset keys were (see :mod:`pipelines.catalog.assets`). Nothing is read until the result is computed.

Radiometry, per item and band, comes from the item metadata:

- Sentinel-2 reflectance = DN * scale + offset. Where the catalog says the ``BOA_ADD_OFFSET``
  was already applied to the pixels (``earthsearch:boa_offset_applied`` of Earth Search v1's
  ``sentinel-2-l2a``, ``sentinel:boa_offset_applied`` of v0), the offset is 0: those COGs are
  harmonised, and the -0.1 that v1 still declares in ``raster:bands`` describes the source
  product (Element84/earth-search#71: applied again it makes half of a vegetated scene's
  reflectance negative). Otherwise ``raster:bands`` scale/offset win when declared; else scale
  is 1e-4 and the offset -0.1 (the -1000 DN ``BOA_ADD_OFFSET``) from processing baseline 04.00
  on. SCL is never rescaled.
- Sentinel-1 backscatter is converted from linear gamma0 to dB.
- DEM heights are metres, resampled bilinearly from EPSG:4326.

Acquisitions of the same UTC day (several tiles or frames of one pass) are mosaicked into one time
step; the first item of the day (input order after sorting by time) wins where they overlap. The
item ids behind each time step are kept in the ``item_ids`` coordinate (comma-separated). A
run's plan gives a tile the S1 scenes of one track a day (``engine.plan.one_pass_a_day``), so
an S1 date is one viewing geometry.

Asset links that need a token (``sign``, from the config's ``stac.sign``) are signed when a
Dask worker opens the file (:func:`reader_for`, :func:`sign_href`), with a token valid for at
least :data:`SAS_MIN_TTL_S`: the graph, the plan, the XComs and the products' provenance hold
the unsigned links, and no token waits in a queue of tasks until it has expired.
"""

from __future__ import annotations

import copy
import datetime as dt
import math
import re
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np
import pystac
import xarray as xr
from odc.geo.geobox import GeoBox
from rasterio.enums import Resampling

from pipelines.catalog.assets import asset_key
from pipelines.errors import BadInputError, NoScenesError, http_status, is_transient
from pipelines.inputs import INPUTS, TRACK_COORD, InputSpec, get_input, item_orbit, track_of

if TYPE_CHECKING:  # the config (pydantic) is not imported by the workers' readers
    from pipelines.config import SignMode

ItemLike = pystac.Item | Mapping[str, Any]

#: Default S2 bands of the stages (BGRN).
S2_DEFAULT_BANDS: tuple[str, ...] = ("B02", "B03", "B04", "B08")
#: Scale of Sentinel-2 L2A DNs when the item declares none.
S2_DEFAULT_SCALE = 1e-4
#: Reflectance offset of processing baseline 04.00 and later (-1000 DN * 1e-4).
S2_PB4_OFFSET = -0.1
_BOA_APPLIED_KEYS = ("earthsearch:boa_offset_applied", "sentinel:boa_offset_applied")


def _as_dict(item: ItemLike) -> dict[str, Any]:
    if isinstance(item, pystac.Item):
        return item.to_dict(transform_hrefs=False)
    return copy.deepcopy(dict(item))


def _epsg_from_code(code: Any) -> int | None:
    if isinstance(code, str) and code.upper().startswith("EPSG:"):
        try:
            return int(code.split(":", 1)[1])
        except ValueError:
            return None
    return None


def normalise_item(item: ItemLike) -> dict[str, Any]:
    """A dict copy of ``item`` that stackstac 0.5.1 can read.

    stackstac reads ``proj:epsg`` only: when an item or asset carries just ``proj:code``
    (projection extension v2), ``proj:epsg`` is derived from it.
    """
    d = _as_dict(item)
    props = d.setdefault("properties", {})
    if props.get("proj:epsg") is None and _epsg_from_code(props.get("proj:code")):
        props["proj:epsg"] = _epsg_from_code(props["proj:code"])
    for asset in (d.get("assets") or {}).values():
        if asset.get("proj:epsg") is None and _epsg_from_code(asset.get("proj:code")):
            asset["proj:epsg"] = _epsg_from_code(asset["proj:code"])
    return d


def _band_meta(asset: Mapping[str, Any]) -> Mapping[str, Any]:
    bands = asset.get("raster:bands") or []
    return bands[0] if bands else {}


def _baseline(props: Mapping[str, Any]) -> float | None:
    for key in ("s2:processing_baseline", "sentinel:processing_baseline", "processing:version"):
        value = props.get(key)
        if value is None:
            continue
        try:
            return float(str(value).lstrip("N"))
        except ValueError:
            continue
    return None


def s2_radiometry(item: ItemLike, band: str) -> tuple[float, float, float | None]:
    """(scale, offset, nodata DN) of canonical ``band`` of a Sentinel-2 item.

    Reflectance = DN * scale + offset. SCL gives (1, 0, nodata): class codes are never rescaled.
    """
    d = item if isinstance(item, Mapping) else _as_dict(item)
    props = d.get("properties") or {}
    asset = d["assets"][asset_key(d, band)]
    meta = _band_meta(asset)
    nodata = meta.get("nodata", 0)
    if band == "SCL":
        return 1.0, 0.0, nodata
    scale = float(meta.get("scale", S2_DEFAULT_SCALE))
    if any(props.get(k) is True for k in _BOA_APPLIED_KEYS):
        return scale, 0.0, nodata  # harmonised pixels, whatever offset the item declares
    if "offset" in meta:
        return scale, float(meta["offset"]), nodata
    pb = _baseline(props)
    offset = S2_PB4_OFFSET if (pb is not None and pb >= 4.0) else 0.0
    return scale, offset, nodata


def _grid_params(geobox: GeoBox) -> dict[str, Any]:
    geobox = getattr(geobox, "geobox", geobox)  # a Tile or ProvinceGrid works too
    if not isinstance(geobox, GeoBox):
        raise BadInputError("geobox", geobox, "an odc.geo GeoBox (e.g. Tile.geobox)")
    epsg = geobox.crs.epsg if geobox.crs is not None else None
    if epsg is None:
        raise BadInputError("geobox.crs", geobox.crs, "a CRS with an EPSG code")
    if not geobox.axis_aligned:
        raise BadInputError("geobox", geobox, "a north-up, axis-aligned GeoBox")
    bb = geobox.boundingbox
    res = geobox.resolution
    return {
        "geobox": geobox,
        "epsg": int(epsg),
        "resolution": (abs(res.x), abs(res.y)),
        "bounds": (bb.left, bb.bottom, bb.right, bb.top),
    }


def _nodata(d: Mapping[str, Any], band: str) -> float | None:
    return _band_meta(d["assets"][asset_key(d, band)]).get("nodata")


#: Projection fields of the STAC projection extension: an item or asset with none of them is
#: not on a map grid (Sentinel-1 GRD: radar geometry, georeferenced by tie points only).
_PROJ_FIELDS = ("proj:epsg", "proj:code", "proj:wkt2", "proj:projjson")


def check_s1_calibrated(d: Mapping[str, Any], band: str) -> None:
    """Raise :class:`BadInputError` unless the normalised item ``d`` holds calibrated backscatter
    on a map grid in ``band`` (terrain-corrected gamma0, as Planetary Computer's
    ``sentinel-1-rtc``). GRD items (Planetary Computer's and Earth Search's
    ``sentinel-1-grd``) hold uncalibrated digital numbers (uint16 amplitude) in radar geometry:
    read as backscatter they would give 20-40 "dB" where water is -30..-20, and every water
    test would silently fail. Refused: the item's collection is a ``-grd`` one, the band's data
    type is an integer, or neither the item nor the asset names a projection."""
    asset = d["assets"][asset_key(d, band)]
    collection = str(d.get("collection") or "")
    projected = any(k in d.get("properties", {}) or k in asset for k in _PROJ_FIELDS)
    dtype = str(_band_meta(asset).get("data_type") or "")
    reason = ""
    if collection.endswith("-grd"):
        reason = f"it is from {collection!r}: uncalibrated digital numbers in radar geometry"
    elif dtype.startswith(("uint", "int")):
        reason = f"its {band} asset holds {dtype} digital numbers, not calibrated backscatter"
    elif not projected:
        reason = "it names no projection (proj:epsg / proj:code): radar geometry"
    if reason:
        raise BadInputError(
            "s1 item",
            d.get("id"),
            "calibrated, terrain-corrected Sentinel-1 backscatter on a map grid (float gamma0, "
            "e.g. Planetary Computer's sentinel-1-rtc collection)",
            f"{reason}; point collections.s1 at an RTC collection",
        )


def check_s1_items(items: Iterable[ItemLike], pols: Sequence[str] = ("VV", "VH")) -> None:
    """:func:`check_s1_calibrated` on every item, for each of ``pols`` it holds (the plan checks
    its searched items before any tile reads one)."""
    for item in items:
        d = normalise_item(item)
        for band in pols:
            try:
                asset_key(d, band)
            except BadInputError:
                continue  # the loader names a missing polarisation itself
            check_s1_calibrated(d, band)


def s1_radiometry(d: Mapping[str, Any], band: str) -> tuple[float, float, float | None]:
    """(scale, offset, nodata) of a Sentinel-1 band: linear backscatter as stored, once
    :func:`check_s1_calibrated` has passed."""
    check_s1_calibrated(d, band)
    return 1.0, 0.0, _nodata(d, band)


def _prepare(
    items: Iterable[ItemLike],
    bands: Sequence[str],
    what: str,
    radiometry: Callable[[Mapping[str, Any], str], tuple[float, float, float | None]],
) -> list[dict[str, Any]]:
    """Normalised item dicts sorted by time, assets renamed to canonical band names.

    ``radiometry(item, band) -> (scale, offset, nodata)`` is evaluated before the renaming and
    kept in ``item["_radiometry"][band]``.
    """
    out = []
    for item in items:
        d = normalise_item(item)
        keys = {b: asset_key(d, b) for b in bands}  # BadInputError names item, band, assets
        d["_radiometry"] = {b: radiometry(d, b) for b in bands}
        d["assets"] = {b: d["assets"][k] for b, k in keys.items()}
        out.append(d)
    if not out:
        raise NoScenesError(f"no {what} items to load")
    out.sort(key=lambda d: (d["properties"].get("datetime") or "", d["id"]))
    return out


#: Credentials rasterio.Env refuses as options: GDAL reads them from the process environment.
_CREDENTIALS = ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN")


#: The public HTTPS link of an object of AWS's open data (S3's virtual-hosted global endpoint,
#: which reaches a bucket in any region).
AWS_OPEN_DATA_URL = "https://{bucket}.s3.amazonaws.com/{key}"


def aws_open_data_href(href: str) -> str:
    """``s3://bucket/key`` as its public HTTPS link (:data:`AWS_OPEN_DATA_URL`); any other link
    as it is. Read by GDAL's plain HTTP reader, never its S3 one, whose settings belong to the
    store and hold for the whole process: once GDAL's S3 reader had read a bucket unsigned, it
    read every later bucket of the process unsigned, and an S3 endpoint once given stayed for
    buckets read without it (both measured), so open data and the store cannot share it."""
    if not href.startswith("s3://"):
        return href
    bucket, _, key = href.removeprefix("s3://").partition("/")
    return AWS_OPEN_DATA_URL.format(bucket=bucket, key=key)


def _gdal_options() -> dict[str, str]:
    """storage.gdal_env() without the credentials (rasterio.Env raises on those)."""
    from pipelines.storage import gdal_env

    return {k: v for k, v in gdal_env().items() if k not in _CREDENTIALS}


# ---- signed asset links ------------------------------------------------------------------------


class SasTokenRequestError(Exception):
    """A Planetary Computer SAS token could not be had for an Azure Blob Storage container
    (:func:`sign_href`); :func:`classify_read_error` says what it becomes."""

    def __init__(self, href: str, sas_url: str, cause: Exception) -> None:
        from urllib.parse import urlsplit

        parts = urlsplit(href)
        container = parts.path.lstrip("/").split("/", 1)[0]
        self.container_url = f"{parts.scheme}://{parts.netloc}/{container}"
        self.sas_url = sas_url
        self.status: int | None = http_status(cause)
        super().__init__(
            f"a SAS token for {self.container_url} from {sas_url} failed: "
            f"{type(cause).__name__}: {cause}"
        )


#: Seconds a SAS token must still be valid for when a file is opened with it: a cached token
#: with less left is replaced by a new one first. A reader opens its file once and reads its
#: blocks for as long as its tile's round computes (seconds to minutes); the package's own rule
#: (a new token under 60 s) could hand a file a token that expires before its last block.
#: Tokens last about an hour; their lifetime depends on the caller (Planetary Computer's
#: documentation: longer for registered users and within West Europe).
SAS_MIN_TTL_S = 600.0
#: Token URLs whose new tokens came with less than :data:`SAS_MIN_TTL_S` left: for them the
#: package's own rule holds (otherwise every open would ask for a token).
SHORT_LIVED_TOKENS: set[str] = set()


@dataclass(frozen=True)
class SignedHref:
    """An asset link as it is read: ``href`` with its SAS token, and when the token expires
    (None: the link needs no token)."""

    href: str
    expiry: dt.datetime | None


def sign_href(href: str, min_ttl_s: float = SAS_MIN_TTL_S) -> SignedHref:
    """``href`` signed by the ``planetary-computer`` package's ``sign_url`` (a SAS token
    appended to an Azure Blob Storage link; others, and links signed already, as they are),
    with a token that has more than ``min_ttl_s`` left. Tokens come from
    ``{PC_SDK_SAS_URL}/{account}/{container}``, one request per container while the cached
    token has that long (429 and 5xx answers retried by the package); where a new token comes
    with less, it is used and the package's own rule holds for that container from then on
    (:data:`SHORT_LIVED_TOKENS`). A failure raises :func:`classify_read_error` of a
    :class:`SasTokenRequestError`."""
    from urllib.parse import urlparse

    import planetary_computer
    from planetary_computer.sas import TOKEN_CACHE
    from planetary_computer.settings import Settings
    from planetary_computer.utils import parse_blob_url

    try:
        signed: str = planetary_computer.sign_url(href)
        if signed == href:
            return SignedHref(href, None)
        account, container = parse_blob_url(urlparse(href.rstrip("/")))
        token_url = f"{Settings.get().sas_url}/{account}/{container}"
        token = TOKEN_CACHE[token_url]
        if token.ttl() < min_ttl_s and token_url not in SHORT_LIVED_TOKENS:
            TOKEN_CACHE.pop(token_url, None)
            signed = planetary_computer.sign_url(href)
            token = TOKEN_CACHE[token_url]
            if token.ttl() < min_ttl_s:
                SHORT_LIVED_TOKENS.add(token_url)
    except Exception as exc:  # requests, pydantic and JSON errors of the token request
        failure = SasTokenRequestError(href, str(Settings.get().sas_url), exc)
        failure.__cause__ = exc
        raise classify_read_error(failure) from failure
    return SignedHref(signed, token.expiry)


def reader_for(sign: SignMode) -> type[Any]:
    """The stackstac reader of asset links signed as ``sign`` says
    (:data:`pipelines.config.SignMode`): :class:`SigningRioReader` for ``planetary_computer``,
    stackstac's own for ``none``."""
    from pipelines.config import SIGN_MODES

    if sign not in SIGN_MODES:
        raise BadInputError("stac.sign", sign, f"one of {list(SIGN_MODES)}")
    if sign == "planetary_computer":
        from pipelines.signed_reads import SigningRioReader

        return SigningRioReader
    from stackstac.rio_reader import AutoParallelRioReader

    return AutoParallelRioReader


def expired_token_failure(
    href: str, expiry: dt.datetime | None, exc: BaseException
) -> Exception | None:
    """A read of ``href`` refused by the blob storage (HTTP 403) once its token, valid until
    ``expiry``, had expired (or was within a minute of it): transient (chained to ``exc``);
    else None."""
    from pipelines.errors import TransientIOError, failure_chain

    now = dt.datetime.now(dt.UTC)
    refused = any(_REFUSED.search(str(e)) for e in failure_chain(exc))
    if expiry is None or not refused or (expiry - now).total_seconds() > 60:
        return None
    failure = TransientIOError(
        f"reading {unsigned(href)}: refused (HTTP 403) after its SAS token expired at "
        f"{expiry:%Y-%m-%dT%H:%M:%SZ}; a retry opens it with a new token"
    )
    failure.__cause__ = exc
    return failure


#: The query of an Azure Blob Storage link (a SAS token), dropped from messages.
_SAS_QUERY = re.compile(r"(\.blob\.core\.windows\.net/[^\s'\"?]*)\?[^\s'\"]*")


def unsigned(text: str) -> str:
    """``text`` with the SAS token of every Azure Blob Storage link in it removed (a message
    that names a signed href, for logs and manifests)."""
    return _SAS_QUERY.sub(r"\1", text)


def _stack(
    items: list[dict[str, Any]],
    bands: Sequence[str],
    geobox: GeoBox,
    *,
    chunksize: int,
    resampling: Resampling,
    sign: SignMode = "none",
) -> xr.DataArray:
    """Raw (unscaled) float32 (time, band, y, x) on ``geobox``; NaN where the files say nodata.
    The asset links are signed as ``sign`` says when a worker opens them (:func:`reader_for`)."""
    import stackstac

    grid = _grid_params(geobox)
    reader = reader_for(sign)
    clean = [{k: v for k, v in d.items() if not k.startswith("_")} for d in items]
    if sign == "aws_public":
        clean = [
            {
                **d,
                "assets": {
                    k: {**a, "href": aws_open_data_href(a["href"])} for k, a in d["assets"].items()
                },
            }
            for d in clean
        ]
    da = stackstac.stack(
        clean,
        assets=list(bands),
        epsg=grid["epsg"],
        resolution=grid["resolution"],
        bounds=grid["bounds"],
        snap_bounds=False,
        chunksize=chunksize,
        dtype=np.dtype("float32"),
        fill_value=np.float32(np.nan),
        rescale=False,
        resampling=resampling,
        sortby_date=False,
        xy_coords="center",
        properties=False,
        band_coords=False,
        gdal_env=stackstac.DEFAULT_GDAL_ENV.updated(always=_gdal_options()),
        reader=reader,
        # stackstac reads an HTTP 404 as nodata by default: a product would be written, marked
        # done and list the scene among its inputs without a pixel of it. A missing file fails
        # the products that read it, named (classify_read_error), wherever the file lives.
        errors_as_nodata=(),
    )
    if da.sizes["time"] == 0:
        raise NoScenesError(f"none of the {len(items)} items intersects the grid {grid['bounds']}")
    gbox: GeoBox = grid["geobox"]
    if (da.sizes["y"], da.sizes["x"]) != tuple(gbox.shape):
        raise BadInputError(
            "geobox", gbox, "a grid stackstac reproduces exactly", f"got {dict(da.sizes)}"
        )
    coords = gbox.coords
    da = da.drop_vars([c for c in da.coords if c not in ("time", "band", "id")])
    da = da.assign_coords(y=coords["y"].values, x=coords["x"].values)
    return da


def _radiometry_block(raw: np.ndarray, table: np.ndarray, block_info: dict[Any, Any]) -> np.ndarray:
    """``raw * scale + offset`` of one (time, band, y, x) block, NaN where ``raw`` equals the
    declared nodata; ``table`` (time, band, 3) float32 holds (scale, offset, nodata) of the
    whole array, of which the block takes its own rows (``block_info``)."""
    (t0, t1), (b0, b1) = block_info[0]["array-location"][:2]
    own = table[t0:t1, b0:b1]
    scale, offset, nodata = (own[..., i][:, :, None, None] for i in range(3))
    out = raw * scale
    out += offset
    if not np.isnan(nodata).all():
        out[raw == nodata] = np.nan
    return out.astype("float32", copy=False)


def _apply_radiometry(
    raw: xr.DataArray, items: list[dict[str, Any]], bands: Sequence[str]
) -> xr.DataArray:
    """``raw * scale + offset`` per (item, band), NaN where raw equals the declared nodata.

    stackstac drops items that miss the grid, so the table follows ``raw``'s ``id`` coord.
    One block call per chunk (:func:`_radiometry_block`), which Dask fuses with the chunk's
    read: the per-(item, band) factors are not broadcast as arrays of their own (three small
    arrays rechunked to the raster's chunks were 90 of a bench tile's 158 S2 read tasks).
    """
    by_id = {d["id"]: d for d in items}
    items = [by_id[str(i)] for i in raw["id"].values]
    table = np.array(
        [
            [(s, o, np.nan if n is None else n) for s, o, n in (d["_radiometry"][b] for b in bands)]
            for d in items
        ],
        dtype="float64",
    ).astype("float32")  # (time, band, 3)
    meta = np.empty((0,) * raw.ndim, dtype="float32")  # given: no call on an empty block
    data = raw.data.map_blocks(_radiometry_block, table=table, dtype="float32", meta=meta)
    return raw.copy(data=data)


def _mosaic_by_day(da: xr.DataArray) -> xr.DataArray:
    """One time step per UTC day: the first valid pixel of that day's items wins."""
    import stackstac

    ids = [str(i) for i in da["id"].values]
    times = da["time"].values
    days = times.astype("datetime64[D]")
    steps, stamps, step_ids = [], [], []
    for day in np.unique(days):
        idx = np.flatnonzero(days == day)
        part = da.isel(time=idx)
        steps.append(
            part.isel(time=0) if len(idx) == 1 else stackstac.mosaic(part, dim="time", reverse=True)
        )
        stamps.append(times[idx[0]])
        step_ids.append(",".join(ids[i] for i in idx))
    out = xr.concat(
        [s.drop_vars(["time", "id"], errors="ignore") for s in steps], dim="time", join="exact"
    )
    out = out.assign_coords(time=("time", np.array(stamps)), item_ids=("time", step_ids))
    out.attrs["item_ids"] = ids
    return out


def _finish(da: xr.DataArray, geobox: GeoBox, **attrs: Any) -> xr.DataArray:
    from odc.geo.xr import assign_crs

    gbox = getattr(geobox, "geobox", geobox)
    if gbox.crs is None:
        raise BadInputError("geobox", gbox, "a grid with a CRS")
    da = assign_crs(da.astype("float32"), gbox.crs)
    da.attrs.update(attrs)
    return da


def load_s2(
    items: Iterable[ItemLike],
    geobox: GeoBox,
    *,
    bands: Sequence[str] = S2_DEFAULT_BANDS,
    with_scl: bool = True,
    chunksize: int = 1024,
    resampling: Resampling = Resampling.nearest,
    sign: SignMode = "none",
) -> xr.DataArray:
    """Sentinel-2 L2A surface reflectance on ``geobox``, lazily.

    Returns a float32 DataArray (time, band, y, x): reflectance (unitless, ~0-1) with NaN at
    nodata, band coord = canonical names (``bands`` then ``"SCL"`` when ``with_scl``; SCL holds
    float class codes with NaN nodata). One time step per UTC day (mosaic of that day's items);
    coord ``item_ids`` names the items behind each step. ``sign``: how the asset links are
    signed for reading (:func:`reader_for`).
    """
    bands = tuple(bands) + (("SCL",) if with_scl and "SCL" not in bands else ())
    prepared = _prepare(items, bands, "Sentinel-2", s2_radiometry)
    raw = _stack(prepared, bands, geobox, chunksize=chunksize, resampling=resampling, sign=sign)
    refl = _apply_radiometry(raw, prepared, bands)
    return _finish(_mosaic_by_day(refl), geobox, units="reflectance", sensor="sentinel-2")


def load_s1(
    items: Iterable[ItemLike],
    geobox: GeoBox,
    *,
    pols: Sequence[str] = ("VV", "VH"),
    chunksize: int = 1024,
    resampling: Resampling = Resampling.bilinear,
    sign: SignMode = "none",
) -> xr.DataArray:
    """Sentinel-1 backscatter in dB on ``geobox``, lazily.

    Returns float32 (time, band, y, x), band = ``pols``: 10*log10(linear gamma0), NaN where the
    linear value is <= 0 or nodata. One time step per UTC day (frames of one pass mosaicked);
    coord ``relative_orbit`` (:data:`pipelines.inputs.TRACK_COORD`) is each day's track, -1
    where its items name none or several. ``sign``: how the asset links are signed for
    reading (:func:`reader_for`).
    """
    pols = tuple(pols)
    prepared = _prepare(items, pols, "Sentinel-1", s1_radiometry)
    raw = _stack(prepared, pols, geobox, chunksize=chunksize, resampling=resampling, sign=sign)
    linear = _apply_radiometry(raw, prepared, pols)
    db = (10.0 * xr.ufuncs.log10(linear.where(linear > 0))).astype("float32")
    days = _mosaic_by_day(db)
    orbit = {d["id"]: item_orbit(d) for d in prepared}
    tracks = [track_of(orbit[i] for i in str(ids).split(",")) for ids in days["item_ids"].values]
    days = days.assign_coords({TRACK_COORD: ("time", np.array(tracks, dtype="int32"))})
    return _finish(days, geobox, units="dB", sensor="sentinel-1")


def load_dem(
    items: Iterable[ItemLike],
    geobox: GeoBox,
    *,
    chunksize: int = 1024,
    resampling: Resampling = Resampling.bilinear,
    sign: SignMode = "none",
) -> xr.DataArray:
    """Copernicus DEM heights (metres) on ``geobox``, lazily: float32 (y, x), NaN at nodata.

    All items are mosaicked (first valid pixel wins) and resampled from their CRS (EPSG:4326).
    ``sign``: how the asset links are signed for reading (:func:`reader_for`).
    """
    prepared = _prepare(items, ("DEM",), "DEM", lambda d, b: (1.0, 0.0, _nodata(d, b)))
    raw = _stack(prepared, ("DEM",), geobox, chunksize=chunksize, resampling=resampling, sign=sign)
    heights = _apply_radiometry(raw, prepared, ("DEM",)).isel(band=0, drop=True)
    ids = [str(i) for i in heights["id"].values]
    if heights.sizes["time"] > 1:
        import stackstac

        heights = stackstac.mosaic(heights, dim="time", reverse=True)
    else:
        heights = heights.isel(time=0)
    heights = heights.drop_vars(["time", "id"], errors="ignore")
    return _finish(heights, geobox, units="m", item_ids=ids)


def load_height_above_drainage(
    dem_items: Iterable[ItemLike],
    geobox: GeoBox,
    *,
    chunksize: int = 1024,
    sign: SignMode = "none",
) -> xr.DataArray:
    """Height above nearest drainage (m) derived from Copernicus DEM items, lazily: float32
    (y, x) on ``geobox`` (a projected grid), NaN where the DEM is.

    The DEM is read at about its own spacing (``HAND_PIXEL_M``: routing on an interpolated
    finer grid adds no information; ``geobox`` zoomed out by a whole factor, so that its
    pixels nest in the coarse ones) over ``geobox`` and a margin of ``HAND_MARGIN_M`` around it
    (so that flow paths reach their drainage instead of the grid's edge), the height computed
    there (:func:`pipelines.stages.terrain.height_above_drainage_np`) and resampled bilinearly
    onto ``geobox`` (OpenCV, pixel centres aligned), in one block. For catalogs without a HAND
    product of their own.
    """
    import dask.array as da

    from pipelines.stages.terrain import (
        HAND_MARGIN_M,
        HAND_PIXEL_M,
        height_above_drainage_nested,
    )

    gbox = getattr(geobox, "geobox", geobox)
    if gbox.crs is None or gbox.crs.geographic:
        raise BadInputError("geobox.crs", gbox.crs, "a projected CRS in metres")
    res = abs(float(gbox.resolution.x))
    factor = max(1, round(HAND_PIXEL_M / res))
    margin_px = math.ceil(HAND_MARGIN_M / (res * factor))
    wide = gbox.zoom_out(factor).pad(margin_px)
    dem = load_dem(dem_items, wide, chunksize=max(wide.shape), sign=sign)
    data = (
        da.asarray(dem.data)
        .rechunk(-1)
        .map_blocks(
            height_above_drainage_nested,
            dtype="float32",
            chunks=tuple((n,) for n in gbox.shape),
            meta=np.empty((0, 0), "float32"),
            transform=wide.transform,
            factor=factor,
            offset=margin_px * factor,
            shape=tuple(gbox.shape),
        )
    )
    coords = {dim: gbox.coords[dim].values for dim in ("y", "x")}
    out = xr.DataArray(data, dims=("y", "x"), coords=coords).chunk({"y": chunksize, "x": chunksize})
    return _finish(out, gbox, units="m", item_ids=dem.attrs.get("item_ids"))


def derive_input(
    spec: InputSpec | str,
    items: Iterable[ItemLike],
    geobox: GeoBox,
    *,
    chunksize: int = 1024,
    sign: SignMode = "none",
) -> xr.DataArray:
    """Source input ``spec`` derived from the items of the input it is derived from
    (:attr:`pipelines.inputs.InputSpec.derived_from`) on ``geobox``, lazily: ``hand`` ->
    :func:`load_height_above_drainage` of DEM items."""
    spec = get_input(spec) if isinstance(spec, str) else spec
    if spec.name == "hand" and spec.derived_from == "dem":
        return load_height_above_drainage(items, geobox, chunksize=chunksize, sign=sign)
    raise BadInputError(
        "input", spec.name, f"one of {[s.name for s in INPUTS if s.derived_from]} to derive"
    )


def load_input(
    spec: InputSpec | str,
    items: Iterable[ItemLike],
    geobox: GeoBox,
    *,
    chunksize: int = 1024,
    sign: SignMode = "none",
) -> xr.DataArray:
    """Source input ``spec`` (a spec of :mod:`pipelines.inputs` or its name) on ``geobox``, lazily.

    Dispatches on the spec's loader: ``s2`` -> :func:`load_s2` of the spec's bands (plus SCL
    where the spec has scene classes),
    ``s1`` -> :func:`load_s1` of the spec's polarisations, ``dem`` -> :func:`load_dem`.
    ``sign``: how the asset links are signed for reading (:func:`reader_for`).
    """
    spec = get_input(spec) if isinstance(spec, str) else spec
    if spec.loader == "s2":
        return load_s2(
            items,
            geobox,
            bands=spec.bands,
            with_scl=spec.scene_classes,
            chunksize=chunksize,
            sign=sign,
        )
    if spec.loader == "s1":
        return load_s1(items, geobox, pols=spec.bands, chunksize=chunksize, sign=sign)
    if spec.loader == "dem":
        return load_dem(items, geobox, chunksize=chunksize, sign=sign)
    raise BadInputError(
        "input",
        spec.name,
        f"one of {[s.name for s in INPUTS if s.loader is not None]}",
        f"{spec.name} has no catalog loader: stages take it only as an optional argument",
    )


#: How stackstac names the file of a failed read: it does not open, or a window does not read.
#: The quotes may come escaped (a worker's exception that did not unpickle arrives as the repr
#: of its message).
_READ_FAILURE = re.compile(
    r"Error opening \\*'(?P<opening>[^'\\]+)\\*'"
    r"|Error reading .*? from \\*'(?P<reading>[^'\\]+)\\*'"
)
#: How GDAL says a file is not there: an HTTP 404 (``/vsicurl``, ``/vsis3``), no such file.
_NOT_FOUND = re.compile(
    r"HTTP response code: 404|\bNo such file or directory\b|does not exist in the file system"
)
#: How a read refused by the storage reads (GDAL's HTTP 403; Azure's own words).
_REFUSED = re.compile(r"HTTP response code: 403|AuthenticationFailed|failed to authenticate")


def _file_key(location: str) -> str:
    """The part of a file's link that names it in any of its forms: an ``s3://`` link's key,
    an HTTP(S) URL's path without its query (a SAS token), a local path; a GDAL ``/vsicurl/``
    or ``/vsis3/`` prefix dropped. No leading slash."""
    from urllib.parse import urlsplit

    for prefix in ("/vsicurl/", "/vsis3/", "/vsiaz/", "/vsigs/"):
        if location.startswith(prefix):
            location = location[len(prefix) :]
    parts = urlsplit(location)
    return (parts.path if parts.scheme else location).lstrip("/")


def asset_item(items: Iterable[Mapping[str, Any]], location: str) -> Mapping[str, Any] | None:
    """The STAC item (dict) one of whose assets is the file a read names at ``location``, or
    None. Matched by the key of each asset's link (:func:`_file_key`), so a link read signed
    (a SAS token), or an ``s3://`` link read over HTTPS (``aws_public``) is still found."""
    wanted = _file_key(location)
    best: Mapping[str, Any] | None = None
    best_len = 0
    for item in items:
        for asset in (item.get("assets") or {}).values():
            href = asset.get("href") if isinstance(asset, Mapping) else None
            key = _file_key(href) if isinstance(href, str) else ""
            if key and (wanted == key or wanted.endswith("/" + key)) and len(key) > best_len:
                best, best_len = item, len(key)
    return best


def _item_id(item: Mapping[str, Any] | None) -> str | None:
    """The ID of ``item`` (None: no item, or an item without one)."""
    return None if item is None or item.get("id") is None else str(item["id"])


def _left_out_by(item: Mapping[str, Any] | None) -> str:
    """What a failed read adds when its file belongs to ``item``: the item's ID and how a run
    leaves it out (``stac.exclude_items``)."""
    if item is None:
        return ""
    return (
        f". It is an asset of the item {item.get('id')!r} (collection "
        f"{item.get('collection')!r}): a scene broken where it is stored is left out of every "
        f"run by listing its ID under stac.exclude_items"
    )


def classify_read_error(exc: Exception, items: Iterable[Mapping[str, Any]] = ()) -> Exception:
    """A scene read failure as a terrapipe error; any other exception is returned as it is.

    A read that may pass on retry (:func:`pipelines.errors.is_transient`: network, HTTP 5xx,
    throttling) becomes :class:`TransientIOError`; a file that does not open, or whose header
    opens but a data block does not decode (corrupt data), a :class:`BadInputError` naming it.
    A SAS token request that failed (:class:`SasTokenRequestError`): refused (HTTP 401/403), a
    :class:`BadInputError` naming ``PC_SDK_SUBSCRIPTION_KEY``; the service still failing after
    the package's retries (429, 5xx, no connection), :class:`TransientIOError`; any other answer,
    a :class:`BadInputError` naming ``PC_SDK_SAS_URL``. Messages name links without their token.
    A file that is missing or corrupt is named with its item when ``items`` (STAC item dicts:
    the scenes the read was given) hold it (:func:`asset_item`).
    """
    from pipelines.errors import TransientIOError, failure_chain

    chain = failure_chain(exc)
    token = next((e for e in chain if isinstance(e, SasTokenRequestError)), None)
    if token is not None:
        return _classify_token_failure(token)
    message = unsigned(str(exc))
    found = next((m for e in chain if (m := _READ_FAILURE.search(unsigned(str(e))))), None)
    rasterio_failed = any(
        type(e).__name__ == "RasterioIOError" or "RasterioIOError" in str(e) for e in chain
    )
    if found is None and not rasterio_failed:
        return exc
    if is_transient(exc):
        return TransientIOError(f"reading a scene failed, may pass on retry: {message}")
    if found is not None and found.group("reading"):
        # GDAL's own words (IReadBlock / TIFFReadEncodedTile failed) are behind the wrapper.
        detail = unsigned(str(chain[-1])) if len(chain) > 1 else message
        item = asset_item(items, found.group("reading"))
        return BadInputError(
            "scene asset",
            found.group("reading"),
            "a readable Cloud-Optimized GeoTIFF",
            f"a data block does not decode, the file is corrupt: {detail[-300:]}"
            + _left_out_by(item),
        ).of_scene(_item_id(item))
    asset = found.group("opening") if found is not None else message
    # A refused read (HTTP 403) is the credentials', not the scene's: every scene would fail.
    refused = _REFUSED.search(message) is not None
    item = asset_item(items, asset) if found is not None and not refused else None
    if _NOT_FOUND.search(message) or any(isinstance(e, FileNotFoundError) for e in chain):
        return BadInputError(
            "scene asset",
            asset,
            "a file the storage holds at the link the catalog gives",
            f"not found (the catalog lists a file its storage does not have): {message[-300:]}"
            + _left_out_by(item),
        ).of_scene(_item_id(item))
    return BadInputError(
        "scene asset",
        asset,
        "a readable Cloud-Optimized GeoTIFF",
        f"the file is corrupt or not a raster: {message[-300:]}" + _left_out_by(item),
    ).of_scene(_item_id(item))


def _classify_token_failure(token: SasTokenRequestError) -> Exception:
    """What a failed SAS token request becomes (:func:`classify_read_error`)."""
    import os

    from pipelines.errors import TransientIOError, failure_chain

    cause = token.__cause__
    if token.status in (401, 403):
        key = "set" if os.environ.get("PC_SDK_SUBSCRIPTION_KEY") else "not set"
        return BadInputError(
            "PC_SDK_SUBSCRIPTION_KEY",
            key,
            "a Planetary Computer subscription key the SAS token service accepts (or none, for "
            "anonymous tokens)",
            f"The token service refused the request with HTTP {token.status}: {token}. Set "
            "PC_SDK_SUBSCRIPTION_KEY in the environment of the Dask workers (they ask for tokens "
            "as they open files) to a valid key (or unset it), or set stac.sign: none for a "
            "catalog whose links need no token",
        )
    retried = any(type(e).__name__ == "RetryError" for e in failure_chain(token))
    if retried or (cause is not None and is_transient(cause)):
        return TransientIOError(f"no SAS token (may pass on retry): {token}")
    return BadInputError(
        "PC_SDK_SAS_URL",
        token.sas_url,
        "a Planetary Computer SAS token endpoint answering {account}/{container} with "
        '{"token": ..., "msft:expiry": ...} (unset: the public one)',
        str(token),
    )


# ---- what GDAL remembers of remote files ------------------------------------------------------


#: GDAL file-system prefixes whose cached entries :func:`forget_remote_files` drops: the
#: properties of remote files (size, that a link was not found) are one cache that every
#: network file system shares; blocks of data are cached per file system.
FORGOTTEN_PREFIXES = (b"/vsicurl/", b"/vsis3/")


def forget_remote_files() -> int:
    """Drop what GDAL's network readers remember in this process of remote files (headers,
    sizes, and that a link was not found), in every libgdal loaded (rasterio's, and any other
    package's own copy, as pyogrio's wheel carries one). GDAL answers a link it once found
    missing (HTTP 404) as missing for the life of the process, even once the file is there,
    whatever the configuration of the later read; a long-lived worker (a cluster the run did
    not start) would fail a redo of that file for ever. Cache entries only, under each prefix
    of :data:`FORGOTTEN_PREFIXES` (GDAL's ``VSICurlPartialClearCache``, as rasterio's own
    ``cache.invalidate`` does), not the connections, which other tasks of the worker may be
    reading through. Returns how many libraries were cleared: 0 where none is loaded or the
    process map cannot be read (not Linux). rasterio exposes this only from 1.5, which needs
    Python 3.12."""
    import ctypes

    import rasterio  # noqa: F401  (loads libgdal)

    try:
        with open("/proc/self/maps", encoding="utf-8") as maps:
            paths = {line.split()[-1] for line in maps if "libgdal" in line.rsplit("/", 1)[-1]}
    except OSError:
        return 0
    cleared = 0
    for path in sorted(paths):
        try:
            clear = ctypes.CDLL(path).VSICurlPartialClearCache
        except (OSError, AttributeError):
            continue
        clear.argtypes = [ctypes.c_char_p]
        clear.restype = None
        for prefix in FORGOTTEN_PREFIXES:
            clear(prefix)
        cleared += 1
    return cleared


# ---- a worker ready before its first read ------------------------------------------------------

#: Modules a tile task reads scenes with: this module and the readers it imports on first use,
#: with what derives a height above drainage from a DEM (pyflwdir: about 0.6 s to import).
READ_MODULES = ("pipelines.load", "stackstac", "rasterio", "pyflwdir")


def limit_native_threads(threads: int) -> int:
    """Limit OpenCV's own thread pool to ``threads`` (a Dask worker's thread count); returns it.

    The OpenCV wheels parallelise with pthreads, sized to the machine's cores and deaf to
    ``OMP_NUM_THREADS`` (which the Dask nanny sets to 1): on a worker of 1 thread each filter
    call would otherwise run one thread per core, beside the other workers' threads."""
    if threads < 1:
        raise BadInputError("threads", threads, "a thread count >= 1 (the worker's threads)")
    import cv2

    cv2.setNumThreads(int(threads))
    return int(cv2.getNumThreads())


def import_modules(modules: Sequence[str], threads: int | None = None) -> int:
    """Import ``modules`` (a worker's readers and stages, before its first task), then limit
    OpenCV to ``threads`` when given (:func:`limit_native_threads`); the number imported."""
    import importlib

    for name in modules:
        importlib.import_module(name)
    if threads is not None:
        limit_native_threads(threads)
    return len(modules)


async def import_in_background(modules: Sequence[str], dask_worker: Any = None) -> None:
    """Start importing ``modules`` in a thread of this process (``Client.run`` on a worker:
    its event loop is not blocked; a task that needs one of them waits on Python's import
    lock), then limit OpenCV to the worker's threads. Defined here, in a module every tile task
    needs anyway: a worker unpickling it imports nothing a task would not."""
    import threading

    threads = getattr(getattr(dask_worker, "state", None), "nthreads", None)
    threading.Thread(target=import_modules, args=(list(modules), threads), daemon=True).start()
