"""Search any STAC API (the local one, Earth Search, Planetary Computer) with pystac-client.

Collections are asked for by logical name (``s2``, ``s1``, ``dem``), mapped to the first of their
candidate collection ids that the API actually has (:data:`COLLECTIONS`, overridable per call), or
by a plain collection id. Cloud cover is sent to the server as a CQL2 ``filter`` or a ``query``
when the API declares that conformance class, and is always applied on the client too, so a server
that ignores it (or, like rustac's memory backend, answers nothing at all to it, which is why it is
never sent to servers that do not declare it) still gives the right answer. The footprint and the
time window are re-checked on the client as well.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Any

import pystac
from shapely.geometry import box, shape
from shapely.geometry.base import BaseGeometry

from pipelines.errors import (
    BadInputError,
    NoScenesError,
    TerrapipeError,
    TransientIOError,
    is_transient,
)

if TYPE_CHECKING:
    import pystac_client

#: Logical collection name -> candidate collection ids, in order of preference.
COLLECTIONS: dict[str, tuple[str, ...]] = {
    "s2": ("sentinel-2-l2a", "sentinel-2-c1-l2a"),
    "s2_l1c": ("sentinel-2-l1c",),
    # Calibrated, terrain-corrected backscatter only: the GRD collections of Planetary Computer
    # and Earth Search hold uncalibrated digital numbers in radar geometry (load.s1_radiometry).
    "s1": ("sentinel-1-rtc",),
    "dem": ("cop-dem-glo-30",),
    # ASF's Global HAND from GLO-30 (and the demo archive's HAND of its DEM).
    "hand": ("glo-30-hand",),
}
#: Logical names whose items carry ``eo:cloud_cover`` (the cloud filter applies to them only).
OPTICAL = frozenset({"s2", "s2_l1c"})

Window = str | tuple[datetime | str | None, datetime | str | None] | None


@dataclass(frozen=True)
class SearchRequest:
    """What to search for; every field optional except the collections."""

    collections: tuple[str, ...]
    """Logical names (``s2``, ``s1``, ``dem``) or collection ids."""
    bbox: tuple[float, float, float, float] | None = None
    """(west, south, east, north) in degrees (EPSG:4326)."""
    intersects: Mapping[str, Any] | None = None
    """A GeoJSON geometry (EPSG:4326); combined with ``bbox`` when both are given."""
    datetime: Window = None
    """``"2024-01-01/2024-03-31"``, ``".."`` open ends, or a (start, end) pair."""
    max_cloud_cover: float | None = None
    """Upper bound on ``eo:cloud_cover`` (percent), for optical collections."""


#: What a STAC API answering 200 with something else (HTML, other JSON) makes the client raise.
NOT_STAC_ERRORS: tuple[type[Exception], ...] = (
    ValueError,  # not JSON (json and requests' JSONDecodeError), or JSON pystac cannot read
    KeyError,
    TypeError,
    AttributeError,  # JSON of another shape, e.g. a list
    pystac.STACError,
)


def not_stac(
    api_url: str, exc: Exception, what: str = "the root URL of a STAC API"
) -> BadInputError:
    """BadInputError for an API whose answer (status 200) is not the STAC JSON expected."""
    detail = f"{type(exc).__name__}: {exc}".replace("\n", " ")
    if len(detail) > 300:
        detail = detail[:297] + "..."
    return BadInputError("api_url", api_url, what, f"its answer is not STAC JSON ({detail})")


#: What a 4xx answer of a STAC API means, and what would be valid instead.
HTTP_CLIENT_ERRORS: dict[int, tuple[str, str]] = {
    400: ("bad request", "a request the API accepts (collections, bbox, datetime, filter)"),
    401: ("unauthorized", "credentials the API accepts"),
    403: ("forbidden", "credentials the API accepts"),
    404: ("not found", "the root URL of a STAC API that serves /collections and /search"),
}


def api_failure(api_url: str, exc: Exception, doing: str) -> TerrapipeError:
    """The terrapipe error of a failed STAC API request (``doing``: what it failed to do).

    :func:`pipelines.errors.is_transient` decides, by type and cause: a connection that failed,
    a timeout, 408, 429 and 5xx are :class:`TransientIOError` (retried); any other 4xx
    (bad request, unauthorized, forbidden, not found) is :class:`BadInputError` naming the URL
    and the status; so is any other failure (e.g. a certificate that does not verify)."""
    detail = " ".join(str(exc).split())
    if len(detail) > 200:
        detail = detail[:197] + "..."
    status = getattr(exc, "status_code", None)
    if is_transient(exc):
        code = f"HTTP {status} " if isinstance(status, int) else ""
        return TransientIOError(f"the STAC API at {api_url} {doing}: {code}{detail}")
    if isinstance(status, int) and 400 <= status < 500:
        meaning, expected = HTTP_CLIENT_ERRORS.get(status, ("client error", "a request it accepts"))
        return BadInputError(
            "api_url", api_url, expected, f"The API {doing}: HTTP {status} {meaning} ({detail})"
        )
    return BadInputError(
        "api_url",
        api_url,
        "a STAC API that answers its requests",
        f"The API {doing}: {type(exc).__name__}: {detail}",
    )


def check_api_url(api_url: str) -> None:
    """Raise BadInputError unless ``api_url`` is an http(s) URL (the only STAC APIs there are)."""
    from pipelines.config import is_http_url

    if not is_http_url(api_url):
        raise BadInputError("api_url", api_url, "the http:// or https:// root URL of a STAC API")


def _open(api_url: str, timeout: float) -> pystac_client.Client:
    import pystac_client
    import requests
    from pystac_client.errors import ClientTypeError
    from pystac_client.exceptions import APIError

    check_api_url(api_url)
    not_a_catalog: tuple[type[Exception], ...] = (ClientTypeError, *NOT_STAC_ERRORS)
    try:
        return pystac_client.Client.open(api_url, timeout=timeout)
    except (requests.ConnectionError, requests.Timeout, APIError) as exc:
        raise api_failure(api_url, exc, "did not answer") from exc
    except not_a_catalog as exc:
        raise not_stac(api_url, exc) from exc


def _parse_instant(value: datetime | str | None, end: bool) -> datetime | None:
    if value is None or value in ("", ".."):
        return None
    if isinstance(value, datetime):
        return value if value.tzinfo else value.replace(tzinfo=UTC)
    text = value.strip()
    date_only = len(text) == 10
    try:
        parsed = datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError as exc:
        raise BadInputError("datetime", value, "an ISO 8601 date or date-time") from exc
    if parsed.tzinfo is None:
        parsed = parsed.replace(tzinfo=UTC)
    if date_only and end:
        parsed = parsed + timedelta(days=1) - timedelta(microseconds=1)
    return parsed


def parse_window(window: Window) -> tuple[datetime | None, datetime | None]:
    """(start, end) in UTC, either None when open; a date-only end means the end of that day."""
    if window is None:
        return None, None
    start: datetime | str | None
    end: datetime | str | None
    if isinstance(window, str):
        parts = window.split("/")
        if len(parts) == 1:
            return _parse_instant(parts[0], False), _parse_instant(parts[0], True)
        if len(parts) != 2:
            raise BadInputError("datetime", window, "'START/END' with ISO dates or '..'")
        start, end = parts
    else:
        start, end = window
    return _parse_instant(start, False), _parse_instant(end, True)


def item_interval(item: pystac.Item) -> tuple[datetime, datetime]:
    """(start, end) of an item: its datetime, or its start/end_datetime range."""
    p = item.properties
    start = _parse_instant(p.get("start_datetime") or p.get("datetime"), False)
    end = _parse_instant(p.get("end_datetime") or p.get("datetime"), False)
    if start is None or end is None:
        raise BadInputError(f"item {item.id!r} datetime", None, "datetime or start/end_datetime")
    return start, end


def _area(request: SearchRequest) -> BaseGeometry | None:
    geom = shape(dict(request.intersects)) if request.intersects is not None else None
    if request.bbox is not None:
        b = box(*request.bbox)
        geom = b if geom is None else geom.intersection(b)
    return geom


def matches(item: pystac.Item, request: SearchRequest, *, cloud: bool = True) -> bool:
    """True when ``item`` meets the request: footprint intersects, time overlaps the window,
    cloud cover <= max (items without ``eo:cloud_cover`` pass)."""
    return matcher(request, cloud=cloud)(item)


def matcher(request: SearchRequest, *, cloud: bool = True) -> Callable[[pystac.Item], bool]:
    """:func:`matches` for many items: the request's area (a province AOI can have thousands
    of vertices) and window are parsed once, the area prepared for repeated tests."""
    import shapely

    area = _area(request)
    if area is not None:
        shapely.prepare(area)
    start, end = parse_window(request.datetime)

    def test(item: pystac.Item) -> bool:
        if area is not None and (
            item.geometry is None or not area.intersects(shape(item.geometry))
        ):
            return False
        i_start, i_end = item_interval(item)
        if start is not None and i_end < start:
            return False
        if end is not None and i_start > end:
            return False
        cc = item.properties.get("eo:cloud_cover")
        if cloud and request.max_cloud_cover is not None and cc is not None:
            return float(cc) <= request.max_cloud_cover
        return True

    return test


def resolve_collections(
    client: Any,
    names: Sequence[str],
    mapping: Mapping[str, Sequence[str]] | None = None,
) -> dict[str, str]:
    """``{requested name: collection id}``: logical names map to the first candidate the API has.

    Raises BadInputError naming the API's collections when a name matches none of them.
    """
    table = COLLECTIONS if mapping is None else mapping
    available = {c.id for c in client.get_collections()}
    out = {}
    for name in names:
        candidates = tuple(table.get(name, (name,)))
        found = next((c for c in candidates if c in available), None)
        if found is None:
            raise BadInputError(
                "collections",
                name,
                f"one of the API's collections {sorted(available)}"
                + (f" (tried {list(candidates)})" if name in table else ""),
            )
        out[name] = found
    return out


def search(
    api_url: str,
    collections: Sequence[str],
    *,
    bbox: Sequence[float] | None = None,
    intersects: Mapping[str, Any] | None = None,
    datetime: Window = None,
    max_cloud_cover: float | None = None,
    mapping: Mapping[str, Sequence[str]] | None = None,
    max_items: int | None = None,
    limit: int = 100,
    timeout: float = 30.0,
) -> list[pystac.Item]:
    """Items of ``collections`` (logical names or ids) matching the filters, sorted by time.

    Cloud cover applies to optical collections only (logical ``s2``, or ids starting with
    ``sentinel-2``). Returns an empty list when nothing matches (see :func:`search_or_raise`).
    Raises TransientIOError naming the URL when the API does not answer.
    """
    import requests
    from pystac_client import ConformanceClasses
    from pystac_client.exceptions import APIError

    box4: tuple[float, float, float, float] | None = None
    if bbox is not None:
        if len(bbox) != 4:
            raise BadInputError("bbox", bbox, "(west, south, east, north) in degrees")
        box4 = (bbox[0], bbox[1], bbox[2], bbox[3])
    request = SearchRequest(
        collections=tuple(collections),
        bbox=box4,
        intersects=intersects,
        datetime=datetime,
        max_cloud_cover=max_cloud_cover,
    )
    parse_window(datetime)  # validate eagerly
    client = _open(api_url, timeout)
    try:
        resolved = resolve_collections(client, request.collections, mapping)
    except (requests.ConnectionError, requests.Timeout, APIError) as exc:
        raise api_failure(api_url, exc, "did not list its collections") from exc
    except BadInputError:  # a collection the API does not have
        raise
    except NOT_STAC_ERRORS as exc:
        raise not_stac(api_url, exc, "a STAC API that lists its collections") from exc
    can_filter = client.conforms_to(ConformanceClasses.FILTER)
    can_query = client.conforms_to(ConformanceClasses.QUERY)
    found: dict[tuple[str, str], pystac.Item] = {}
    for name, collection_id in resolved.items():
        optical = name in OPTICAL or collection_id.startswith("sentinel-2")
        kwargs: dict[str, Any] = {
            "collections": [collection_id],
            "bbox": request.bbox,
            "intersects": dict(intersects) if intersects is not None else None,
            "datetime": datetime,
            "limit": limit,
            "max_items": max_items,
        }
        if optical and max_cloud_cover is not None:
            if can_filter:
                kwargs["filter"] = {
                    "op": "<=",
                    "args": [{"property": "eo:cloud_cover"}, max_cloud_cover],
                }
                kwargs["filter_lang"] = "cql2-json"
            elif can_query:
                kwargs["query"] = {"eo:cloud_cover": {"lte": max_cloud_cover}}
        try:
            items = list(client.search(**kwargs).items())
        except (requests.ConnectionError, requests.Timeout, APIError) as exc:
            raise api_failure(api_url, exc, "failed a search") from exc
        except NOT_STAC_ERRORS as exc:
            raise not_stac(api_url, exc, "a STAC API whose search answers STAC items") from exc
        keep = matcher(request, cloud=optical)
        for item in items:
            if keep(item):
                found[(item.collection_id or collection_id, item.id)] = item
    return sorted(found.values(), key=lambda i: (item_interval(i)[0], i.collection_id or "", i.id))


def search_or_raise(api_url: str, collections: Sequence[str], **kwargs: Any) -> list[pystac.Item]:
    """:func:`search`, raising NoScenesError (the task is skipped) when nothing matches."""
    items = search(api_url, collections, **kwargs)
    if not items:
        shown = {k: v for k, v in kwargs.items() if v is not None and k != "mapping"}
        raise NoScenesError(f"no {list(collections)} scenes at {api_url} for {shown}")
    return items
