"""Province configuration: what to produce, where, from which catalog, into which store.

A YAML file validated by pydantic; every error names the field, the value and what is valid.
Relative paths in the file are resolved against the file's folder.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import os
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal, cast, get_args

import yaml
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    ValidationInfo,
    field_validator,
    model_validator,
)

from pipelines.agri.calendar import CropCalendar
from pipelines.errors import BadInputError

if TYPE_CHECKING:
    from shapely.geometry.base import BaseGeometry

#: The embedded default: the demo province on the local archive, STAC API and store.
DEFAULT_CONFIG = Path(__file__).parent / "data" / "demo.yaml"


class _Frozen(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


def is_http_url(value: object) -> bool:
    """True for an http:// or https:// URL with a host (the only kind a STAC API has)."""
    from urllib.parse import urlsplit

    if not isinstance(value, str):
        return False
    parts = urlsplit(value)
    return parts.scheme in ("http", "https") and bool(parts.netloc)


#: How asset links are signed when pixels are read: ``planetary_computer`` appends a
#: Planetary Computer SAS token to Azure Blob Storage hrefs (as a worker opens the file);
#: ``aws_public`` reads ``s3://`` hrefs of AWS's open data over HTTPS, without credentials;
#: ``none`` reads the hrefs as the catalog gives them (``s3://`` with the store's S3 settings).
SignMode = Literal["planetary_computer", "aws_public", "none"]
SIGN_MODES: tuple[SignMode, ...] = cast(tuple[SignMode, ...], get_args(SignMode))
#: Host of Planetary Computer's STAC API: its items' asset links need a SAS token.
PLANETARY_COMPUTER_HOST = "planetarycomputer.microsoft.com"
#: Host of Earth Search's STAC API: its ``s3://`` asset links (the Copernicus DEM) are AWS open
#: data, read without credentials from AWS itself, not from the store's S3.
EARTH_SEARCH_HOST = "earth-search.aws.element84.com"


_SIGN_EXPECTED = (
    "one of 'planetary_computer' (append a Planetary Computer SAS token to the asset links), "
    "'aws_public' (read s3:// links of AWS's open data over HTTPS, without credentials) or "
    "'none' (read them as given, s3:// links with the store's S3 settings); leave it out for "
    f"'planetary_computer' on {PLANETARY_COMPUTER_HOST}, 'aws_public' on {EARTH_SEARCH_HOST}, "
    "'none' elsewhere"
)


def stac_signing(stac: Mapping[str, Any]) -> SignMode:
    """How the asset links of a ``stac`` config section (as JSON, e.g. a plan's ``config``) are
    signed: its ``sign`` when set, else ``planetary_computer`` for a STAC API on
    :data:`PLANETARY_COMPUTER_HOST`, ``aws_public`` for one on :data:`EARTH_SEARCH_HOST` and
    ``none`` for any other (and for a served archive, which lives with the store)."""
    from urllib.parse import urlsplit

    sign = stac.get("sign")
    if sign is not None:
        if sign not in SIGN_MODES:
            raise BadInputError("stac.sign", sign, _SIGN_EXPECTED)
        return cast(SignMode, sign)
    url = stac.get("url")
    host = urlsplit(url).hostname if isinstance(url, str) else None
    if host == PLANETARY_COMPUTER_HOST:
        return "planetary_computer"
    return "aws_public" if host == EARTH_SEARCH_HOST else "none"


class StacConfig(_Frozen):
    """Where scenes are searched."""

    url: str | None = None
    """STAC API root URL. None: serve ``archive`` on loopback for the run (embedded default)."""
    archive: str | None = None
    """Archive root (local path or s3:// URL) served when ``url`` is None."""
    collections: dict[str, str] = Field(
        default_factory=lambda: {
            "s2": "sentinel-2-l2a",
            "s2_l1c": "sentinel-2-l1c",
            "s1": "sentinel-1-rtc",
            "dem": "cop-dem-glo-30",
        }
    )
    """Logical input name -> collection id in this catalog."""
    max_cloud_cover: float = Field(80.0, ge=0, le=100)
    """Scenes with more cloud than this (percent) are not searched."""
    exclude_items: tuple[str, ...] = ()
    """IDs of STAC items left out of every search: scenes broken where they are stored (an
    asset the storage does not have, a corrupt file), which a failed read names. Products are
    then made from the other scenes, and a date with no other scene is not planned."""
    sign: SignMode | None = None
    """How asset links are signed when a tile reads pixels (never in the plan):
    ``planetary_computer`` (a SAS token from ``PC_SDK_SAS_URL``, with ``PC_SDK_SUBSCRIPTION_KEY``
    when set), ``aws_public`` (``s3://`` links of AWS's open data read over HTTPS, without
    credentials) or ``none`` (as given; ``s3://`` links with the store's S3 endpoint and
    credentials). None: ``planetary_computer`` on Planetary Computer's API, ``aws_public`` on
    Earth Search's, else ``none`` (:func:`stac_signing`)."""

    @field_validator("sign", mode="before")
    @classmethod
    def _sign_mode(cls, value: Any) -> Any:
        if value is not None and value not in SIGN_MODES:
            raise ValueError(_SIGN_EXPECTED)
        return value

    @property
    def signing(self) -> SignMode:
        """The signing this section asks for, its default resolved (:func:`stac_signing`)."""
        return stac_signing({"sign": self.sign, "url": self.url})

    @field_validator("exclude_items")
    @classmethod
    def _item_ids(cls, value: tuple[str, ...]) -> tuple[str, ...]:
        blank = [i for i in value if not i.strip()]
        if blank:
            raise ValueError(f"STAC item IDs (non-empty strings); got {list(value)!r}")
        return value

    @field_validator("url")
    @classmethod
    def _http_url(cls, value: str | None) -> str | None:
        if value is not None and not is_http_url(value):
            raise ValueError("the http:// or https:// root URL of a STAC API")
        return value

    @model_validator(mode="after")
    def _one_source(self) -> StacConfig:
        if self.url is None and self.archive is None:
            raise ValueError("give stac.url (a STAC API) or stac.archive (served locally)")
        return self


class DaskConfig(_Frozen):
    """The Dask cluster the stages run on."""

    address: str | None = None
    """Scheduler address of an existing cluster; None starts a LocalCluster per run."""
    n_workers: int = Field(2, ge=1)
    """CPU workers of the LocalCluster."""
    threads_per_worker: int = Field(1, ge=1)
    gpu_workers: int = Field(1, ge=0)
    """LocalCluster workers declaring ``GPU=1`` (models run on CUDA when present, CPU otherwise)."""
    memory_limit: str = "4GiB"
    """Per-worker memory limit of the LocalCluster."""
    worker_start: Literal["forkserver", "spawn"] = "forkserver"
    """How the LocalCluster starts its worker processes: ``forkserver`` forks each from one
    process that has loaded the readers, the CPU tile stages and their compiled kernels once
    (``operators.fork_server``), so a worker (and a restarted one) is ready when it registers;
    ``spawn`` starts each from a fresh interpreter that loads them itself (Dask's default; for
    a platform without ``fork``, or a library that is not safe to fork)."""


class FloodConfig(_Frozen):
    """How pre- and post-event SAR scenes are picked for flood_change."""

    pre_days: int = Field(30, ge=1)
    """Pre-event reference: S1 scenes in the ``pre_days`` before the event; without an event
    date, before the window's start, and in a window's later months before each month's first
    day (:func:`pipelines.inputs.reference_window`)."""
    event_date: dt.date | None = None
    """Event date for the flood_event DAG; post scenes are those on or after it in the window."""


class AgriConfig(_Frozen):
    """Inputs of the season DAG (parcels -> crop_type -> yield) beyond the scenes."""

    labels: str | None = None
    """GeoJSON of labelled fields (points or polygons with a ``crop`` property)."""
    counties: str | None = None
    """GeoJSON of county polygons (``county_id`` and ``name`` properties) for the yield table."""
    yield_history: str | None = None
    """CSV of past county yields: ``season,county_id,crop,yield`` (t/ha); only seasons before
    the forecast season are used."""


#: Mantissa bits a stored float raster keeps by default (cube and COG alike), rounded to nearest
#: (Klower et al. 2021, Nat. Comput. Sci. 1: keep the bits that carry information, zero the
#: rest so the compressors can work). 13 bits: a relative error of at most 2**-14 (6.1e-5),
#: below the precision of every input the stages measure from: Sentinel-2 L2A reflectance is
#: quantised in steps of 1e-4 (3.05e-5 at most for reflectance below 1, under a third of a
#: step), Sentinel-1 backscatter is calibrated to about 1 dB (1.5e-3 dB at -25 dB). On the
#: dehaze tile of the bench (DEMO) a float32 COG shrinks by about a third.
STORED_MANTISSA_BITS = 13

#: Config fields added after configs were in use (dotted within a section), with their
#: defaults as JSON: left out of the fingerprint while they hold the default.
FINGERPRINT_SINCE: dict[str, Any] = {
    "mantissa_bits": STORED_MANTISSA_BITS,
    "stac.exclude_items": [],
}


class ProvinceConfig(_Frozen):
    """A province production run."""

    province: str = Field(pattern=r"^[a-z0-9][a-z0-9_-]{0,62}$")
    """Province name: lower case letters, digits, '-' and '_'; used in output paths."""
    aoi: dict[str, Any]
    """AOI as GeoJSON (geometry, Feature or FeatureCollection) in WGS84."""
    crs: str
    """Projected processing CRS, e.g. ``EPSG:32650``."""
    resolution: float = Field(10.0, gt=0)
    """Output pixel size in CRS units (metres)."""
    tile_px: int = Field(1024, ge=16, le=8192)
    """Processing tile edge in pixels (one Zarr chunk)."""
    start: dt.date
    """First day of the date window (inclusive)."""
    end: dt.date
    """Last day of the date window (inclusive)."""
    products: tuple[str, ...]
    """Registered stages to produce (their dependencies are produced too)."""
    stac: StacConfig
    store: str
    """Output store: local directory or s3:// URL."""
    dask: DaskConfig = DaskConfig()
    flood: FloodConfig = FloodConfig()
    max_mapped_tasks: int = Field(256, ge=1, le=1024)
    """Upper bound of Airflow mapped tasks per stage group; tiles are batched to fit."""
    agri: AgriConfig = AgriConfig()
    crop_calendar: CropCalendar | None = None
    """Crop calendar for crop_type/yield: inline mapping or a calendar YAML path (None: unset)."""
    mantissa_bits: int | None = Field(STORED_MANTISSA_BITS, ge=1, le=52)
    """Mantissa bits the products' float rasters keep when stored (rounded to nearest: a
    relative error of at most 2**-(bits + 1); :data:`STORED_MANTISSA_BITS`); None: every bit as
    computed, in larger files."""

    @field_validator("crop_calendar", mode="before")
    @classmethod
    def _calendar_file(cls, value: Any) -> Any:
        from pipelines.agri.calendar import calendar_input

        return calendar_input(value)

    @field_validator("crs")
    @classmethod
    def _projected_crs(cls, value: str) -> str:
        from pyproj import CRS
        from pyproj.exceptions import CRSError

        try:
            crs = CRS.from_user_input(value)
        except CRSError as exc:
            raise ValueError(f"not a CRS: {exc}") from None
        if not crs.is_projected:
            raise ValueError("must be a projected CRS in metres (e.g. a UTM zone EPSG:326xx)")
        return value

    @field_validator("products")
    @classmethod
    def _known_products(cls, value: tuple[str, ...]) -> tuple[str, ...]:
        from pipelines.stages import list_stages

        known = list_stages()
        unknown = [p for p in value if p not in known]
        if unknown:
            raise ValueError(f"unknown product(s) {unknown}; registered stages are {known}")
        if not value:
            raise ValueError(f"at least one product; registered stages are {known}")
        return value

    @field_validator("aoi")
    @classmethod
    def _valid_aoi(cls, value: dict[str, Any]) -> dict[str, Any]:
        from shapely.geometry import shape
        from shapely.validation import explain_validity

        geoms = _geojson_geometries(value)
        if not geoms:
            raise ValueError("GeoJSON with at least one Polygon or MultiPolygon")
        for g in geoms:
            try:
                geom = shape(g)
            except Exception as exc:  # shapely raises several kinds for malformed coordinates
                raise ValueError(f"GeoJSON geometries with valid coordinates ({exc})") from None
            if geom.is_empty or geom.geom_type not in ("Polygon", "MultiPolygon"):
                raise ValueError(f"Polygon or MultiPolygon geometries, got {geom.geom_type}")
            if not geom.is_valid:
                raise ValueError(
                    f"a valid polygon without self-intersections, got {explain_validity(geom)}"
                )
            minx, miny, maxx, maxy = geom.bounds
            if not (-180 <= minx <= maxx <= 180 and -90 <= miny <= maxy <= 90):
                raise ValueError(f"WGS84 lon/lat coordinates, got bounds {geom.bounds}")
        return value

    @field_validator("end")
    @classmethod
    def _window(cls, value: dt.date, info: ValidationInfo) -> dt.date:
        start = info.data.get("start")
        if start is not None and value < start:
            raise ValueError(f"a date on or after start ({start})")
        return value

    # ---- derived -------------------------------------------------------------------------

    def aoi_geometry(self) -> BaseGeometry:
        """The AOI as one shapely geometry in WGS84."""
        return geojson_geometry(self.aoi)

    def aoi_projected(self) -> BaseGeometry:
        """The AOI as one shapely geometry in the province CRS."""
        from pipelines.grid import reproject_geometry

        return reproject_geometry(self.aoi_geometry(), "EPSG:4326", self.crs)

    def with_window(self, start: dt.date, end: dt.date) -> ProvinceConfig:
        """The same config over another date window (backfill, scheduled runs)."""
        return self.model_copy(update={"start": start, "end": end})

    def fingerprint(self) -> str:
        """Short hash of everything that decides the outputs' location and content. Fields of
        :data:`FINGERPRINT_SINCE` count only when they differ from their default, so a config
        written before such a field existed keeps its fingerprint (its runs, ``terrapipe
        redo``); ``stac.sign`` never counts (how links are read, not what is produced)."""
        doc = self.model_dump(mode="json")
        for name, default in FINGERPRINT_SINCE.items():
            *sections, key = name.split(".")
            parent = doc
            for section in sections:
                parent = parent[section]
            if parent.get(key) == default:
                parent.pop(key)
        doc["stac"].pop("sign", None)
        blob = json.dumps(doc, sort_keys=True).encode()
        return hashlib.sha256(blob).hexdigest()[:12]


def geojson_geometry(obj: dict[str, Any]) -> BaseGeometry:
    """A GeoJSON geometry, Feature or FeatureCollection (a config's ``aoi``) as one shapely
    geometry."""
    from shapely.geometry import shape
    from shapely.ops import unary_union

    return unary_union([shape(g) for g in _geojson_geometries(obj)])


def _geojson_geometries(obj: dict[str, Any]) -> list[dict[str, Any]]:
    kind = obj.get("type")
    if kind == "FeatureCollection":
        return [f.get("geometry") for f in obj.get("features", []) if f.get("geometry")]
    if kind == "Feature":
        return [obj["geometry"]] if obj.get("geometry") else []
    if kind in ("Polygon", "MultiPolygon", "Point", "LineString", "MultiPoint"):
        return [obj]
    return []


#: How far (degrees) an AOI may reach beyond its CRS's area of use: one UTM zone.
AOI_MARGIN_DEG = 6.0


def check_aoi_in_crs(config: ProvinceConfig) -> None:
    """Raise BadInputError unless the AOI lies in (or near) the area where its CRS is used: far
    outside it (another part of the globe than a UTM zone's) projected coordinates blow up."""
    import math

    from pyproj import CRS

    aoi = config.aoi_geometry()
    west, south, east, north = aoi.bounds
    area = CRS.from_user_input(config.crs).area_of_use
    zone = min(60, int((west + east) / 2 + 180) // 6 + 1)
    hemisphere = 6 if (south + north) / 2 >= 0 else 7
    hint = f"Use the CRS of the AOI's zone, e.g. EPSG:32{hemisphere}{zone:02d}"
    m = AOI_MARGIN_DEG
    wraps = area is not None and area.west > area.east  # an area across the antimeridian
    if area is not None and not (
        (wraps or (area.west - m <= west and east <= area.east + m))
        and area.south - m <= south
        and north <= area.north + m
    ):
        raise BadInputError(
            "aoi",
            f"bounds {tuple(round(v, 4) for v in aoi.bounds)}",
            f"an AOI within {m:g} degrees of where {config.crs} is used "
            f"(lon {area.west}..{area.east}, lat {area.south}..{area.north})",
            hint,
        )
    try:
        bounds = config.aoi_projected().bounds
    except Exception as exc:  # pyproj and shapely raise several kinds on coordinates out of range
        raise BadInputError(
            "aoi", aoi.bounds, f"an AOI that {config.crs} can project", hint
        ) from exc
    if not all(math.isfinite(v) for v in bounds):
        raise BadInputError("aoi", aoi.bounds, f"an AOI that {config.crs} can project", hint)


def terrapipe_home() -> Path:
    """Working folder of the embedded default (archive, store, Airflow home): ``$TERRAPIPE_HOME``
    or ``./var``."""
    return Path(os.environ.get("TERRAPIPE_HOME", "var")).resolve()


def real_data_dir() -> Path:
    """The folder of the real EO test data (PROVENANCE.md beside it): ``$TERRAPIPE_REAL_DATA``,
    else ``shared/data/real`` beside the repository."""
    env = os.environ.get("TERRAPIPE_REAL_DATA")
    if env:
        return Path(env)
    return Path(__file__).resolve().parents[2] / "shared" / "data" / "real"


def _resolve_path(value: str, base: Path) -> str:
    value = value.replace("{home}", str(terrapipe_home()))
    if "://" in value or os.path.isabs(value):
        return value
    return str((base / value).resolve())


def parse_config(raw: dict[str, Any], base: Path | None = None) -> ProvinceConfig:
    """Validate a config mapping; relative paths are resolved against ``base``."""
    if not isinstance(raw, dict):
        raise BadInputError("config", raw, "a YAML mapping of province settings")
    raw = dict(raw)
    base = base or Path.cwd()
    aoi = raw.get("aoi")
    if isinstance(aoi, str):
        aoi_path = _resolve_path(aoi, base)
        try:
            from pipelines import storage

            raw["aoi"] = json.loads(storage.read_text(aoi_path))
        except FileNotFoundError:
            raise BadInputError("aoi", aoi, "a GeoJSON file that exists") from None
        except (IsADirectoryError, NotADirectoryError, PermissionError) as exc:
            raise BadInputError("aoi", aoi, "a readable GeoJSON file", str(exc)) from None
        except (json.JSONDecodeError, UnicodeDecodeError) as exc:
            raise BadInputError("aoi", aoi, "a valid GeoJSON file", str(exc)) from None
    if isinstance(raw.get("store"), str):
        raw["store"] = _resolve_path(raw["store"], base)
    if isinstance(raw.get("crop_calendar"), str):
        raw["crop_calendar"] = _resolve_path(raw["crop_calendar"], base)
    agri = raw.get("agri")
    if isinstance(agri, dict):
        raw["agri"] = {
            k: _resolve_path(v, base) if isinstance(v, str) else v for k, v in agri.items()
        }
    stac = raw.get("stac")
    if isinstance(stac, dict) and isinstance(stac.get("archive"), str):
        raw["stac"] = {**stac, "archive": _resolve_path(stac["archive"], base)}
    try:
        config = ProvinceConfig.model_validate(raw)
    except ValidationError as exc:
        err = exc.errors()[0]
        field = ".".join(str(p) for p in err["loc"]) or "config"
        value: Any = err.get("input")
        if err["type"] == "missing":
            value = None
        expected = err["msg"].removeprefix("Value error, ")
        if err["type"] == "extra_forbidden":
            allowed = ", ".join(_allowed_fields(err["loc"]))
            expected = f"no such field; allowed fields here are: {allowed}"
        raise BadInputError(field, value, expected) from None
    check_aoi_in_crs(config)
    return config


def _allowed_fields(loc: tuple[Any, ...]) -> list[str]:
    model: type[BaseModel] = ProvinceConfig
    for part in loc[:-1]:
        annotation = model.model_fields.get(str(part))
        sub = getattr(annotation, "annotation", None)
        if isinstance(sub, type) and issubclass(sub, BaseModel):
            model = sub
    return sorted(model.model_fields)


class ConfigLoader(yaml.SafeLoader):
    """YAML's safe loader, leaving dates as text: pydantic parses them, so a date such as
    ``2025-13-45`` is an error naming its field rather than a crash in the YAML reader."""


ConfigLoader.yaml_implicit_resolvers = {
    first: [(tag, regexp) for tag, regexp in resolvers if tag != "tag:yaml.org,2002:timestamp"]
    for first, resolvers in yaml.SafeLoader.yaml_implicit_resolvers.items()
}


def load_config(path: str | os.PathLike[str] | None = None, **overrides: Any) -> ProvinceConfig:
    """Read and validate a province config YAML (the embedded demo config when ``path`` is None).

    ``overrides`` replace top-level fields after reading (e.g. ``store="s3://bucket/out"``).
    """
    from pipelines import storage

    path = str(path) if path is not None else str(DEFAULT_CONFIG)
    try:
        text = storage.read_text(path)
    except FileNotFoundError:
        raise BadInputError("config", path, "a province config YAML file that exists") from None
    except (IsADirectoryError, NotADirectoryError, PermissionError) as exc:
        raise BadInputError(
            "config", path, "a readable province config YAML file", str(exc)
        ) from None
    except UnicodeDecodeError as exc:
        raise BadInputError("config", path, "a UTF-8 text YAML file", str(exc)) from None
    try:
        raw = yaml.load(text, Loader=ConfigLoader)  # a SafeLoader
    except yaml.YAMLError as exc:
        raise BadInputError("config", path, "valid YAML", str(exc).replace("\n", " ")) from None
    if isinstance(raw, dict):
        raw.update({k: v for k, v in overrides.items() if v is not None})
    base = Path(path).resolve().parent if "://" not in path else Path.cwd()
    return parse_config(raw, base)
