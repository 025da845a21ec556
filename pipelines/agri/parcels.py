"""parcels: field parcels at two levels (fine, coarse) from the season feature cube.

Method (per tile; the whole (y, x) block is one numpy call):

1. **Features**: each pixel's NDVI curve on the season calendar (``doy``); pixels never observed
   are not parcels. (Adding the BGRN curves lowered the edge contrast on the demo archive: the
   visible bands differ little between fields.)
2. **Temporal edge strength**: for each pixel, the largest, over its 4 neighbours, of the median
   over the calendar (and feature channels) of the absolute difference between the two curves
   (NDVI units). A field border of one or two pixels (a path, a ditch, a grass strip) differs
   from the fields beside it through most of the season, so it stands out even between two
   fields of the same crop. The difference is taken pixel to pixel because a Sobel window
   smears a one-pixel border over three pixels and leaves the border pixel itself low, and the
   median, not the RMS, because a date where a cloud edge or haze was left in one pixel's curve
   would otherwise read as a border (on the demo archive: 1st percentile of border pixel pairs
   / 99th of pairs inside fields = 1.96 with the median, 1.3 with the RMS).
3. **Pixel clustering**: MiniBatchKMeans on the curves (``n_clusters``) gives each pixel a
   phenology class; a parcel's class is its majority class (used by the coarse level).
4. **Superpixels**: markers are the connected areas of low edge strength (< ``edge_threshold``)
   of at least ``min_marker_px`` pixels. Under cloud a single weak pixel of the border between
   two fields joins their markers: with SAR, markers are cut into their calm pieces (edge
   strength below the median of the interpolated pixels: a gap three pixels wide in a border
   is weak but not calm), the pieces cut where two bodies of at least ``min_parcel_px`` pixels
   join through a bridge one pixel wide (:func:`split_thin_bridges`), and the pieces whose SAR
   curves are one population are joined again (:func:`calm_markers`,
   :func:`group_calm_markers`, :func:`curve_separation`: Ashman's D < 2 with the within-piece
   covariance pooled over the tile; never the edge strength along the cut); without SAR the
   markers themselves are cut at such bridges, with nothing to join a field's pieces again. A
   marker-controlled watershed of the edge strength grows them over the tile (scikit-image).
5. **Region merging** (fine level): a region adjacency graph weighted by the mean edge strength
   along each shared boundary (``skimage.graph.rag_boundary``) is merged hierarchically
   (``skimage.graph.merge_hierarchical``) while a boundary is weaker than ``merge_threshold``;
   regions smaller than ``min_parcel_px`` are dissolved into their neighbours by watershed.
   **SAR under cloud**: when the cube carries SAR (``sar_filtered``: speckle-filtered over the
   season) and
   ``clear_dates``, a boundary's weight is ``max(boundary, (1 - w) * merge_threshold * d /
   sar_merge_db)`` (:func:`merge_weight`): ``d`` the RMS difference (dB) of the two regions' mean
   VV/VH calendar curves, ``w`` the regions' mean :func:`pipelines.agri.features.optical_weight`
   (how much of their NDVI curves clear dates observed). A cloudy season's NDVI interpolated over
   a month-long gap hides the grass margin between a corn and a cotton field (both green up
   behind the cloud), but the fields' SAR curves differ by dBs (canopy structure, sowing dates);
   one field's pieces agree to speckle. With every pixel observed at least once per calendar
   step, ``w`` is 1 and the merging is the optical one exactly. Per-pixel SAR differences do
   not find the one-pixel borders (on the demo archive, border pixels' SAR edge strength is no
   higher than inside fields even after the multi-temporal filter), so SAR enters per region.
   Then, under cloud, adjacent regions with no border strip anywhere along their boundary (a
   strip running along it) and SAR curves of one population merge
   (:func:`merge_one_population`): the pieces of a field whose interpolated NDVI made its
   inside noisy.
6. **Boundary refinement**: border strips one or two pixels wide that differ from the fields
   on both sides (strip strength >= ``strip_threshold``, :func:`border_strip_strength_np`: the
   grass margins, paths and ditches between fields) become 0; parcels that never reach NDVI
   ``min_peak_ndvi`` (water, built-up, bare ground) become 0. A pixel on an edge ridge that
   differs from its parcel's mean curve is not removed for that alone: in a field three pixels
   wide every pixel lies on a ridge, and under cloud its interpolated curve is as far from the
   mean as a border's, so such a test took the field's rims, the field fell apart into slivers
   at its staircase steps and no piece matched it (on the demo archive, 2024 season, 16 tiles
   of 512 px: 372 of 8,190 true fields lost that way, 319 of them one to three pixels wide;
   with the strips alone 154). Field borders are straight: a border strip found along part of
   its length inside a parcel (a straight run, Hough transform) is followed across the parcel,
   and the parcel is cut along it where at least half of that chord is a weaker strip
   (:func:`cut_along_border_lines`); each fine parcel is one 4-connected piece.
7. **Coarse level**: the fine parcels' adjacency graph (across the removed border pixels),
   weighted by the RMS distance between their mean curves, merged hierarchically while below
   ``coarse_threshold`` and only between parcels of the same phenology class: adjacent fields
   of the same crop and timing form one coarse parcel. Every coarse parcel is a union of fine
   parcels by construction.

Ids are 1..n local to the input (0 = not a parcel), int32.
"""

from __future__ import annotations

import functools
from typing import Any

import numpy as np
import xarray as xr

from pipelines.errors import BadInputError

__all__ = [
    "SAR_MERGE_DB",
    "UNIMODAL_MERGE_D",
    "UNIMODAL_SPLIT_D",
    "ashman_d",
    "border_strip_strength_np",
    "calm_markers",
    "curve_separation",
    "cut_along_border_lines",
    "group_calm_markers",
    "merge_one_population",
    "merge_weight",
    "parcels",
    "parcels_np",
    "split_by_sar",
    "split_thin_bridges",
    "temporal_edge_strength",
    "temporal_edge_strength_np",
]

_REQUIRED = ("ndvi",)
#: Temporal edge strength (NDVI) below which a pixel can seed a parcel (``edge_threshold``).
#: Set on the DEMO archive, whose inside-field edge strength has a median of 0.013-0.016; on
#: the REAL eo-learn patch the inside of the RABA polygons has 0.030 (``terrapipe eval
#: parcels``, ``edge_inside_parcels``): see docs/agri.md, "The edge threshold on a real patch".
EDGE_THRESHOLD = 0.035
#: Two regions whose mean VV/VH season curves differ by this RMS (dB) are as far apart as a
#: boundary at ``merge_threshold``. 1 dB: the published differences between crops' C-band
#: curves are several dB over the season (corn vs soybean VH ~1.5-3 dB at peak canopy, a crop
#: sown two months apart up to ~8 dB during green-up; Veloso et al. 2017, RSE 199), while two
#: pieces of one field share crop, sowing date and soil and differ only by speckle: a region of
#: 20 px of ENL 4.4 per date has a mean of standard error 2.2 dB / sqrt(20 * dates) < 0.2 dB.
SAR_MERGE_DB = 1.0
#: Ashman's D of the k-means halves of ONE normal population: the halves' means lie at
#: +/- 0.798 sigma with standard deviations 0.603 sigma, D = 2 * 0.798 / 0.603 = 2.65. A region
#: splits only where its SAR pixels, weighted by ``1 - w``, are more bimodal than that.
UNIMODAL_SPLIT_D = 2.65
#: Ashman's D below which two regions' pixels are one population: an equal mixture of two normal
#: populations of one variance is unimodal exactly when their means are less than two standard
#: deviations apart (D < 2; Behboodian 1970, Ashman, Bird & Zeger 1994).
UNIMODAL_MERGE_D = 2.0
#: The low threshold of a border line's support is this share of ``strip_threshold``: the 2:1
#: ratio of Canny's hysteresis (Canny 1986), a weaker strip pixel that continues a strong one.
LINE_SUPPORT_RATIO = 0.5
#: A border line cuts a parcel where at least this share of its chord across the parcel is
#: border strip (at the low threshold): the majority of its length.
LINE_SUPPORT_SHARE = 0.5


def _check_features(features: Any) -> xr.Dataset:
    if not isinstance(features, xr.Dataset):
        raise BadInputError(
            "features", type(features).__name__, "an xarray.Dataset from season_features"
        )
    for name in _REQUIRED:
        if name not in features:
            raise BadInputError(
                "features", sorted(features.data_vars), f"a Dataset with variable {name!r}"
            )
    nd = features["ndvi"]
    if set(nd.dims) != {"doy", "y", "x"}:
        raise BadInputError("features.ndvi", tuple(nd.dims), "dims ('doy', 'y', 'x')")
    if nd.sizes["doy"] < 2:
        raise BadInputError("features.doy", nd.sizes["doy"], "at least 2 calendar dates")
    return features


def _positive(name: str, value: float, upper: float | None = None) -> float:
    ok = np.isfinite(value) and value > 0 and (upper is None or value <= upper)
    if not ok:
        bound = f" and <= {upper}" if upper is not None else ""
        raise BadInputError(name, value, f"a number > 0{bound}")
    return float(value)


def temporal_edge_strength_np(curves: np.ndarray) -> np.ndarray:
    """(Y, X) float32: max over the 4 neighbours of the median absolute difference between the
    pixel's and the neighbour's (D, Y, X) ``curves`` (the median over D is robust to the few
    dates a cloud edge or haze left in the curves). NaN curves count as 0.
    """
    c = np.nan_to_num(np.asarray(curves, dtype="float32"))
    edge = np.zeros(c.shape[1:], dtype="float32")
    dh = np.median(np.abs(c[:, :, 1:] - c[:, :, :-1]), axis=0)
    dv = np.median(np.abs(c[:, 1:, :] - c[:, :-1, :]), axis=0)
    np.maximum(edge[:, 1:], dh, out=edge[:, 1:])
    np.maximum(edge[:, :-1], dh, out=edge[:, :-1])
    np.maximum(edge[1:, :], dv, out=edge[1:, :])
    np.maximum(edge[:-1, :], dv, out=edge[:-1, :])
    return edge


def border_strip_strength_np(curves: np.ndarray, by_axis: bool = False) -> np.ndarray:
    """(Y, X) float32: how strongly a pixel is a border strip one or two pixels wide (NDVI units);
    with ``by_axis``, (2, Y, X): across y (a strip running along x, differing from the pixels
    above and below it), then across x.

    A strip (a grass margin, a path, a ditch between two fields) differs from the fields on BOTH
    sides, where a field's own edge pixel differs from one side only. With ``d(o)`` the median
    over the calendar of the absolute curve difference to the pixel at offset ``o``, along each
    axis: ``min(max(d(-1), d(-2)), max(d(+1), d(+2)), max(d(-1), d(+1)))`` (both sides differ
    within two pixels, and an immediate neighbour differs: a field three pixels wide is not a
    strip); the larger of the two axes. NaN curves count as 0, as in
    :func:`temporal_edge_strength_np`. Catches margins between fields whose crop looks like the
    margin's grass for most of the season, where the median edge strength alone is too weak.
    """
    c = np.nan_to_num(np.asarray(curves, dtype="float32"))
    _, ny, nx = c.shape
    pad = np.pad(c, ((0, 0), (2, 2), (2, 2)), mode="edge")

    def diff(dy: int, dx: int) -> np.ndarray:
        other = pad[:, 2 + dy : 2 + dy + ny, 2 + dx : 2 + dx + nx]
        return np.median(np.abs(c - other), axis=0)

    out = np.zeros((2, ny, nx), dtype="float32")
    for k_axis, axis in enumerate(((1, 0), (0, 1))):  # offsets along y, then along x
        d = {k: diff(k * axis[0], k * axis[1]) for k in (-2, -1, 1, 2)}
        both_sides = np.minimum(np.maximum(d[-1], d[-2]), np.maximum(d[1], d[2]))
        out[k_axis] = np.minimum(both_sides, np.maximum(d[-1], d[1]))
    return out if by_axis else out.max(axis=0)


def cut_along_border_lines(
    labels: np.ndarray, strip: np.ndarray, strip_threshold: float, min_parcel_px: int
) -> np.ndarray:
    """``labels`` (Y, X) int with 0 on the chords of straight border lines that cross a parcel.

    Field borders are straight over their length (fields are laid out as polygons), but under
    cloud a border strip between two fields of one crop reads as a strip (``strip`` >=
    ``strip_threshold``, :func:`border_strip_strength_np`) only along parts of it, and the two
    fields stay one parcel through the gaps. For each parcel of at least ``3 * min_parcel_px``
    pixels, straight runs of its strip pixels (its own and its outline's) at least
    ``2 * ceil(sqrt(min_parcel_px))`` pixels long (twice the side of the smallest parcel;
    ``skimage.transform.probabilistic_hough_line``, gaps up to 3 px) are extended across the
    parcel; a chord along which at least ``LINE_SUPPORT_SHARE`` of the pixels have a strip
    strength of at least ``LINE_SUPPORT_RATIO * strip_threshold`` becomes border (0). Chords with
    less support (a field's inner texture, a strip that ends inside the field) leave it whole.
    """
    from scipy import ndimage
    from skimage.draw import line as draw_line
    from skimage.transform import probabilistic_hough_line

    out = labels.copy()
    min_run = 2 * int(np.ceil(np.sqrt(min_parcel_px)))
    low = LINE_SUPPORT_RATIO * strip_threshold
    for lab, box in enumerate(ndimage.find_objects(labels), start=1):
        if box is None:
            continue
        box = tuple(
            slice(max(b.start - 1, 0), min(b.stop + 1, n))
            for b, n in zip(box, labels.shape, strict=True)
        )
        inside = labels[box] == lab
        if inside.sum() < 3 * min_parcel_px:
            continue
        outline = ndimage.binary_dilation(inside)
        strong = (strip[box] >= strip_threshold) & outline
        if strong.sum() < min_run:
            continue
        runs = probabilistic_hough_line(strong, threshold=5, line_length=min_run, line_gap=3, rng=0)
        reach = 2 * max(inside.shape)
        for (x0, y0), (x1, y1) in runs:
            length = float(np.hypot(x1 - x0, y1 - y0))
            ux, uy = (x1 - x0) / length, (y1 - y0) / length
            rr, cc = draw_line(
                round(y0 - uy * reach),
                round(x0 - ux * reach),
                round(y1 + uy * reach),
                round(x1 + ux * reach),
            )
            on = (rr >= 0) & (rr < inside.shape[0]) & (cc >= 0) & (cc < inside.shape[1])
            rr, cc = rr[on], cc[on]
            chord = inside[rr, cc]
            if chord.sum() < min_run:
                continue
            rr, cc = rr[chord], cc[chord]
            if (strip[box][rr, cc] >= low).mean() >= LINE_SUPPORT_SHARE:
                out[box][rr, cc] = 0  # the chord lies inside the parcel
    return out


def _boundary_merge(graph: Any, src: int, dst: int) -> None:
    """merge_hierarchical callback: nothing to update on the nodes (edges carry the state)."""


def _boundary_weight(graph: Any, src: int, dst: int, n: int) -> dict[str, float]:
    """Boundary of the merged region with ``n``: count-weighted mean of src's and dst's."""
    default = {"weight": 0.0, "count": 0}
    a, b = graph[src].get(n, default), graph[dst].get(n, default)
    count = a["count"] + b["count"]
    weight = (a["count"] * a["weight"] + b["count"] * b["weight"]) / max(count, 1)
    return {"count": count, "weight": weight}


def merge_weight(
    boundary: float, sar_rms_db: float, w: float, merge_threshold: float, sar_merge_db: float
) -> float:
    """Merge weight of two regions (NDVI units; merged while below ``merge_threshold``):
    ``max(boundary, (1 - w) * merge_threshold * sar_rms_db / sar_merge_db)``.

    ``boundary``: mean temporal edge strength along the shared boundary (NDVI); ``sar_rms_db``:
    RMS difference of the regions' mean SAR curves (dB; NaN: no SAR); ``w``: the regions'
    optical weight (0..1). An optical boundary keeps its strength (cloud gaps weaken boundaries,
    they do not make them); the SAR difference, weighted by how much of the NDVI curves is
    interpolated (``1 - w``), can only add a boundary the clouds hid. ``w = 1``: the optical
    weight alone; ``w = 0``: regions whose SAR curves differ by ``sar_merge_db`` or more stay apart.
    """
    if not np.isfinite(sar_rms_db):
        return float(boundary)
    return float(max(boundary, (1.0 - w) * merge_threshold * sar_rms_db / sar_merge_db))


def _sar_node_merge(graph: Any, src: int, dst: int) -> None:
    """merge_hierarchical callback: add src's SAR sums, counts and optical weights to dst's."""
    g = graph.nodes
    for key in ("sar_sum", "sar_n", "w_sum", "px"):
        g[dst][key] = g[dst][key] + g[src][key]


def _sar_rms(graph: Any, a: int, b: int) -> float:
    na, nb = graph.nodes[a], graph.nodes[b]
    ok = (na["sar_n"] > 0) & (nb["sar_n"] > 0)
    if not ok.any():
        return float("nan")
    diff = na["sar_sum"][ok] / na["sar_n"][ok] - nb["sar_sum"][ok] / nb["sar_n"][ok]
    return float(np.sqrt(np.mean(np.square(diff))))


def _sar_edge_data(graph: Any, a: int, b: int, boundary: float, count: int) -> dict[str, float]:
    w = (graph.nodes[a]["w_sum"] + graph.nodes[b]["w_sum"]) / max(
        graph.nodes[a]["px"] + graph.nodes[b]["px"], 1.0
    )
    thr, sar_db = graph.graph["merge_threshold"], graph.graph["sar_merge_db"]
    weight = merge_weight(boundary, _sar_rms(graph, a, b), w, thr, sar_db)
    return {"boundary": boundary, "count": count, "weight": weight}


def _sar_boundary_weight(graph: Any, src: int, dst: int, n: int) -> dict[str, float]:
    """merge_hierarchical callback: the merged region's boundary with ``n`` (count-weighted mean
    of src's and dst's) combined with the SAR difference by :func:`merge_weight`."""
    default = {"boundary": 0.0, "count": 0}
    a, b = graph[src].get(n, default), graph[dst].get(n, default)
    count = a["count"] + b["count"]
    boundary = (a["count"] * a["boundary"] + b["count"] * b["boundary"]) / max(count, 1)
    return _sar_edge_data(graph, dst, n, boundary, count)


def _two_means(x: np.ndarray, iters: int = 10) -> np.ndarray:
    """Two-cluster k-means of the rows of ``x`` (n, F), started from the split at the median of
    the first principal axis (deterministic). Returns bool (n,): the second cluster."""
    c = x - x.mean(axis=0)
    _, _, vt = np.linalg.svd(c[:: max(1, len(c) // 2000)], full_matrices=False)
    proj = c @ vt[0]
    part = proj > np.median(proj)
    for _ in range(iters):
        if part.all() or not part.any():
            break
        ma, mb = x[~part].mean(axis=0), x[part].mean(axis=0)
        new = np.square(x - mb).sum(axis=1) < np.square(x - ma).sum(axis=1)
        if (new == part).all():
            break
        part = new
    return part


def ashman_d(x: np.ndarray, part: np.ndarray) -> float:
    """Ashman's D (Ashman et al. 1994) of the two parts of the rows of ``x`` (n, F) along the
    line through their means: ``sqrt(2) |m1 - m2| / sqrt(s1^2 + s2^2)``."""
    if part.all() or not part.any():
        return 0.0
    u = x[part].mean(axis=0) - x[~part].mean(axis=0)
    norm = float(np.linalg.norm(u))
    if norm == 0:
        return 0.0
    a, b = x[part] @ (u / norm), x[~part] @ (u / norm)
    spread = float(np.sqrt(a.var() + b.var()))
    return float(np.sqrt(2.0) * abs(a.mean() - b.mean()) / max(spread, 1e-12))


def _held_out_split(x: np.ndarray, fold: np.ndarray) -> tuple[np.ndarray, float]:
    """Two-means split of the rows of ``x`` fitted on the ``fold`` rows, every row assigned to
    the nearer mean, and Ashman's D of the other rows' parts: the bimodality of pixels that did
    not choose the split (in many dimensions, k-means finds a direction along which even one
    normal population looks split; rows it never saw do not)."""
    fit = x[fold]
    part_fit = _two_means(fit)
    if part_fit.all() or not part_fit.any():
        return np.zeros(len(x), dtype=bool), 0.0
    ma, mb = fit[~part_fit].mean(axis=0), fit[part_fit].mean(axis=0)
    part = np.square(x - mb).sum(axis=1) < np.square(x - ma).sum(axis=1)
    return part, ashman_d(x[~fold], part[~fold])


def split_by_sar(
    labels: np.ndarray,
    edge: np.ndarray,
    sar: np.ndarray,
    w_px: np.ndarray,
    vote: float = 1.0,
    min_parcel_px: int = 20,
    max_rounds: int = 3,
) -> np.ndarray:
    """Split regions that hold two fields the clouds merged, by their SAR curves.

    A marker grows across a grass margin wherever the margin's edge strength is weak for one
    pixel, which a cloud gap over the green-up makes common: two fields then start as one
    region. For every region of ``labels`` (Y, X; 0 = none) whose mean optical weight ``w`` is
    below 1, its core pixels (more than ``MT_WINDOW_PX // 2`` px inside the region, clear of the
    speckle filter's window reaching into the neighbours) are split in two by k-means on their
    SAR curves ``sar`` (F, Y, X dB), fitted on one chessboard fold of the core; when
    ``(1 - w) * D >= vote * UNIMODAL_SPLIT_D`` (``D`` Ashman's D of the other fold's two parts,
    :func:`ashman_d`: more bimodal than one normal population cut in two, weighted by how much
    of the NDVI curve is interpolated) and each part's largest connected piece of core holds
    ``min_parcel_px`` pixels (two fields are two bodies; speckle scatters), those pieces seed a
    watershed of ``edge`` inside the region: the split follows the weak optical border. Repeated
    up to ``max_rounds`` times (three fields in one region). Returns int64 labels.
    """
    from scipy import ndimage
    from skimage.segmentation import watershed

    from pipelines.agri.features import MT_WINDOW_PX

    out = np.asarray(labels, dtype="int64").copy()
    f = np.nan_to_num(np.asarray(sar, dtype="float32"))
    margin = MT_WINDOW_PX // 2
    for _ in range(max_rounds):
        split_any = False
        next_id = int(out.max()) + 1
        for lab, sl in enumerate(ndimage.find_objects(out), start=1):
            if sl is None:
                continue
            region = out[sl] == lab
            if region.sum() < 2 * min_parcel_px:
                continue
            w = float(w_px[sl][region].mean())
            if w >= 1.0:
                continue
            core = ndimage.binary_erosion(region, iterations=margin)
            if core.sum() < 2 * min_parcel_px:
                continue
            x = f[:, sl[0], sl[1]][:, core].T.astype("float64")
            yy, xx = np.nonzero(core)
            part, d = _held_out_split(x, (yy + xx) % 2 == 0)  # chessboard folds
            n_b = int(part.sum())
            if min(n_b, len(part) - n_b) < min_parcel_px:
                continue
            if (1.0 - w) * d < vote * UNIMODAL_SPLIT_D:
                continue
            # Each part's seed is its largest 4-connected piece of the core: two fields are two
            # bodies, while speckle scatters a part in pieces too small to seed anything.
            seeds = np.zeros(region.shape, dtype="int64")
            ok = True
            for code, mask in ((1, ~part), (2, part)):
                plane = np.zeros(region.shape, dtype=bool)
                plane[yy[mask], xx[mask]] = True
                pieces, n_pieces = ndimage.label(plane)
                sizes = np.bincount(pieces.ravel(), minlength=n_pieces + 1)
                sizes[0] = 0
                if n_pieces == 0 or sizes.max() < min_parcel_px:
                    ok = False
                    break
                seeds[pieces == int(sizes.argmax())] = code
            if not ok:
                continue
            grown = watershed(edge[sl], seeds, mask=region)
            block = out[sl]
            block[(grown == 2) & region] = next_id
            next_id += 1
            split_any = True
        if not split_any:
            break
    return out


def split_thin_bridges(
    markers: np.ndarray, min_body_px: int, observed: np.ndarray | None = None
) -> np.ndarray:
    """Markers made of two or more bodies joined by bridges one pixel wide, cut at the bridges.

    ``markers``: (Y, X) int ids of connected areas of low edge strength (0 = none). Where
    pixels of the border between two fields read as weak (a cloud gap leaves their curves,
    interpolated over a month or more, alike to both fields'), the two fields' markers join
    through them: a bridge one pixel wide. A morphological opening by the 3 x 3 cross removes
    every part of the markers that is one pixel wide; where a marker then falls into two or more
    pieces of at least ``min_body_px`` pixels (as large as a parcel may be), each piece becomes
    a marker of its own and the marker's other pixels are left to the watershed. Other markers
    are kept whole. ``observed`` (Y, X) bool: pixels whose NDVI curve clear dates observed at
    every calendar step (:func:`pipelines.agri.features.optical_weight` = 1); their similarity
    is measured, not interpolated, and the opening never removes them (all observed: the
    markers unchanged; None: every pixel may go). Returns int64 ids."""
    from scipy import ndimage

    cross = ndimage.generate_binary_structure(2, 1)
    out = np.asarray(markers, dtype="int64").copy()
    opened = ndimage.binary_opening(out > 0, structure=cross)
    if observed is not None:
        opened |= (out > 0) & np.asarray(observed, dtype=bool)
    pieces, _ = ndimage.label(opened, structure=cross)
    sizes = np.bincount(pieces.ravel())
    body = sizes >= min_body_px
    body[0] = False
    on_body = body[pieces]
    # the pieces only lose pixels of their marker: each lies inside one marker
    parent = np.zeros(len(sizes), dtype=np.int64)
    parent[pieces[on_body]] = out[on_body]
    n_bodies = np.bincount(parent[body], minlength=int(out.max()) + 1)
    cut = n_bodies >= 2
    cut[0] = False
    take = on_body & cut[out]
    out[cut[out]] = 0
    out[take] = pieces[take] + int(out.max())
    return out


def _region_moments(
    pieces: np.ndarray, feats: np.ndarray, n: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Pixel count (n,), feature sums (n, F) and cross-product sums (n, F, F) of the (F, Y, X)
    ``feats`` over each label 1..n-1 of ``pieces`` (0 = none; row 0 stays 0)."""
    flat = pieces.ravel()
    on = flat > 0
    lab = flat[on]
    order = np.argsort(lab, kind="stable")
    x = feats.reshape(feats.shape[0], -1)[:, on].T.astype("float64")[order]
    count = np.bincount(lab, minlength=n).astype("float64")
    f = feats.shape[0]
    sums = np.zeros((n, f))
    cross = np.zeros((n, f, f))
    bounds = np.concatenate([[0], np.cumsum(count.astype("int64"))])
    for k in np.nonzero(count)[0]:
        block = x[bounds[k] : bounds[k + 1]]
        sums[k] = block.sum(axis=0)
        cross[k] = block.T @ block
    return count, sums, cross


def _pooled_moments(
    labels: np.ndarray, feats: np.ndarray, n: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray | None]:
    """Pixel count (n,) and feature sums (n, F) of each label 1..n-1 of ``labels`` (0 = none)
    over the (F, Y, X) ``feats`` (NaN read as 0), and the within-region covariance (F, F)
    pooled over the labels (Hotelling's model); None when the pixels leave no degree of
    freedom for it."""
    count, sums, cross = _region_moments(labels, np.nan_to_num(feats), n)
    dof = count.sum() - (n - 1)
    if dof < 1:
        return count, sums, None
    within = cross.sum(axis=0) - np.einsum("k,ki,kj->ij", 1.0 / np.maximum(count, 1), sums, sums)
    return count, sums, within / dof


def curve_separation(
    n_a: float, sum_a: np.ndarray, n_b: float, sum_b: np.ndarray, within: np.ndarray
) -> float:
    """Ashman's D of two regions' mean curves against their pixels' spread: how many
    within-region standard deviations apart the means are.

    ``n_*``: pixel counts, ``sum_*`` (F,): the sums of the pixels' curves (F features, e.g. the
    SAR calendar curves of both polarisations, dB), ``within`` (F, F): the covariance of a
    pixel's curve about its region's mean, shared by the regions (the pooled within-region
    covariance, Hotelling's model). Each feature is scaled by its within-region standard
    deviation; along the line through the two means, ``D = |m_a - m_b| / s``, ``s`` the pixels'
    standard deviation along that line (``sqrt(2) |m_a - m_b| / sqrt(s_a^2 + s_b^2)`` with one
    variance). The squared distance of the means is taken less its expectation for two samples
    of ONE population (``trace / n_a + trace / n_b`` in the scaled units): over many dates,
    two pieces of one field differ by chance on every date. D < 2: the two regions' pixels,
    pooled, are one unimodal population (:data:`UNIMODAL_MERGE_D`).
    """
    if min(n_a, n_b) < 1:
        return float("inf")
    var = np.diag(within)
    scale = np.sqrt(np.maximum(var, 0.0))
    ok = scale > 1e-6 * max(float(scale.max()), 1e-12)
    if not ok.any():
        return 0.0
    s = scale[ok]
    delta = (sum_a / n_a - sum_b / n_b)[ok] / s
    cov = within[np.ix_(ok, ok)] / np.outer(s, s)
    d2 = float(delta @ delta)
    if d2 == 0.0:
        return 0.0
    u = delta / np.sqrt(d2)
    spread = float(u @ cov @ u)
    excess = max(d2 - float(np.trace(cov)) * (1.0 / n_a + 1.0 / n_b), 0.0)
    return float(np.sqrt(excess / max(spread, 1e-12)))


def _add_node_sums(graph: Any, src: int, dst: int) -> None:
    """merge_hierarchical callback: add src's pixel count and curve sums (and optical weight,
    where the nodes carry one) to dst's."""
    g = graph.nodes
    for key in ("n", "sum", "w_sum"):
        if key in g[dst]:
            g[dst][key] = g[dst][key] + g[src][key]


def _calm_weight(graph: Any, src: int, dst: int, n: int) -> dict[str, float]:
    """merge_hierarchical callback: the merged region's separation from ``n``."""
    a, b = graph.nodes[dst], graph.nodes[n]
    return {"weight": curve_separation(a["n"], a["sum"], b["n"], b["sum"], graph.graph["within"])}


def group_calm_markers(
    markers: np.ndarray,
    calm: np.ndarray,
    edge: np.ndarray,
    feats: np.ndarray,
    max_d: float = UNIMODAL_MERGE_D,
) -> tuple[np.ndarray, set[tuple[int, int]]]:
    """Markers cut into the calm pieces inside them, the pieces of one field joined again.

    ``markers``: (Y, X) int ids (0 = none); ``calm``: (Y, X) int ids of calm pieces (0 = none),
    each inside one marker; ``edge``: (Y, X) edge strength; ``feats``: (F, Y, X) pixel curves.
    A marker holding two or more calm pieces is shared among them by a watershed of ``edge``
    inside the marker; adjacent pieces are then merged hierarchically, the closest pair first,
    while their calm pixels' curves are one population (:func:`curve_separation` below
    ``max_d``, with the within-piece covariance pooled over every calm piece of the input). The
    criterion never reads the edge strength along the cut. Markers with fewer than two calm
    pieces are kept whole. Returns int64 ids and the pairs of ids (low, high) that the merging
    left adjacent inside one marker: two populations, which the region merging keeps apart
    whatever the edge strength between them (:func:`_merge_regions`).
    """
    from skimage import graph
    from skimage.segmentation import relabel_sequential, watershed

    markers = np.asarray(markers, dtype="int64")
    calm = relabel_sequential(np.where(markers > 0, np.asarray(calm, dtype="int64"), 0))[0]
    out = markers.copy()
    n_calm = int(calm.max())
    if n_calm < 2:
        return out, set()
    count, sums, within = _pooled_moments(calm, feats, n_calm + 1)
    if within is None:
        return out, set()
    parent = np.zeros(n_calm + 1, dtype="int64")
    parent[calm[calm > 0]] = markers[calm > 0]
    multi = np.bincount(parent[1:], minlength=int(markers.max()) + 1) >= 2
    multi[0] = False
    region = multi[markers]
    seeds = np.where(region, calm, 0)
    if not seeds.any():
        return out, set()
    grown = watershed(edge, seeds, mask=region).astype("int64")
    rag = _adjacency(grown)
    rag.graph["within"] = within
    for node in rag.nodes:
        rag.nodes[node].update({"labels": [node], "n": count[node], "sum": sums[node]})
    for u, v, d in rag.edges(data=True):
        d.update(_calm_weight(rag, u, u, v))
    merged = graph.merge_hierarchical(
        grown,
        rag,
        thresh=max_d,
        rag_copy=False,
        in_place_merge=True,
        merge_func=_add_node_sums,
        weight_func=_calm_weight,
    )
    out[region] = merged[region] + int(out.max()) + 1
    out = relabel_sequential(out)[0].astype("int64")
    # the groups left adjacent inside a marker are apart: their curves are two populations
    apart = _adjacency(np.where(region, out, 0))
    return out, {(min(u, v), max(u, v)) for u, v in apart.edges}


def calm_markers(
    markers: np.ndarray,
    edge: np.ndarray,
    valid: np.ndarray,
    observed: np.ndarray,
    sar: np.ndarray,
    min_parcel_px: int,
) -> tuple[np.ndarray, set[tuple[int, int]]]:
    """Markers cut where their interpolated pixels are not calm, the pieces of one field joined
    again by their SAR curves (:func:`group_calm_markers`). Returns int64 ids and the pairs of
    ids kept apart.

    Calm: edge strength below the median over the valid pixels whose NDVI curve is interpolated
    over cloud gaps (``observed`` False), the typical strength inside a field under this
    season's clouds; observed pixels of a marker stay calm. A gap three pixels wide or more in
    the border between two fields is weaker than ``edge_threshold`` but rarely calmer than the
    inside of a field, so the calm pieces of the two fields part there. Calm pieces are cut at
    bridges one pixel wide (:func:`split_thin_bridges`) and count from ``min_parcel_px`` pixels
    (a smaller piece is no field's body). The pieces are compared by their ``sar`` (F, Y, X dB)
    curves, not by their NDVI: a cloud that covered part of a field on some dates leaves its
    pieces with NDVI curves interpolated over different gaps, while radar sees every piece on
    every date.
    """
    from skimage import measure

    interp = valid & ~observed
    if not interp.any():
        return np.asarray(markers, dtype="int64"), set()
    calm_thr = float(np.median(edge[interp]))
    calm = measure.label((markers > 0) & (observed | (edge < calm_thr)), connectivity=1)
    calm = _drop_small(split_thin_bridges(calm, min_parcel_px, observed), min_parcel_px)
    return group_calm_markers(markers, calm, edge, sar)


def _population_edge(graph: Any, u: int, v: int, pairs: int, strips: int) -> float:
    """Separation of regions ``u`` and ``v`` (:func:`curve_separation` of their SAR curves);
    infinite where a border strip lies anywhere along their boundary (``strips`` of its
    ``pairs`` pixel pairs) or where either region's NDVI curves are all observed."""
    a, b = graph.nodes[u], graph.nodes[v]
    if strips > 0 or a["w_sum"] >= a["n"] or b["w_sum"] >= b["n"]:
        return float("inf")
    return curve_separation(a["n"], a["sum"], b["n"], b["sum"], graph.graph["within"])


def _population_weight(graph: Any, src: int, dst: int, n: int) -> dict[str, float]:
    """merge_hierarchical callback: the merged region's boundary pairs and strips with ``n``
    (the sums of src's and dst's) and its separation from ``n``."""
    default = {"pairs": 0, "strips": 0}
    a, b = graph[src].get(n, default), graph[dst].get(n, default)
    pairs, strips = a["pairs"] + b["pairs"], a["strips"] + b["strips"]
    weight = _population_edge(graph, dst, n, pairs, strips)
    return {"pairs": pairs, "strips": strips, "weight": weight}


def merge_one_population(
    labels: np.ndarray, sar: np.ndarray, w_px: np.ndarray, strip: np.ndarray
) -> np.ndarray:
    """Adjacent regions with no border strip between them and SAR curves of one population,
    merged: the pieces of a field that the cloud-interpolated NDVI cut apart.

    Under cloud the inside of a field gets noisy (its NDVI curves are interpolated over
    different gaps), and its pieces' boundaries read as strong as a border. A border between
    two fields is a strip one or two pixels wide that runs along their boundary (``strip``
    (2, Y, X) bool: :func:`border_strip_strength_np` by axis at or above ``strip_threshold``,
    across y then across x). A pixel pair across the boundary touches a strip where one of its
    two pixels is a strip across the pair's own axis: the borders along a field's sides, which a
    cut across the field meets at its two ends, run across the cut and do not count there.
    Where not one pixel pair along the shared boundary of two regions touches a strip, and
    their ``sar`` (F, Y, X dB) curves
    are one population (:func:`curve_separation` below :data:`UNIMODAL_MERGE_D`, the
    within-region covariance pooled over the regions of ``labels``), the two are merged,
    closest pair first. Only regions whose NDVI curves are in part interpolated (mean
    ``w_px`` < 1) take part: an observed boundary is measured, not interpolated. Returns int64
    labels (0 = none).
    """
    from skimage import graph
    from skimage.segmentation import relabel_sequential

    sp = relabel_sequential(np.asarray(labels, dtype="int64"))[0]
    strip = np.asarray(strip, dtype=bool)
    if strip.shape != (2, *sp.shape):
        raise BadInputError("strip", strip.shape, f"(2, *labels.shape) = {(2, *sp.shape)}")
    n = int(sp.max()) + 1
    count, sums, within = _pooled_moments(sp, sar, n)
    if n < 3 or within is None:
        return sp
    w_sum = np.bincount(sp.ravel(), weights=w_px.ravel().astype("float64"), minlength=n)
    across_y, across_x = strip[0], strip[1]
    u_all, v_all, s_all = [], [], []
    for a, b, sa, sb in (
        (sp[:, :-1], sp[:, 1:], across_x[:, :-1], across_x[:, 1:]),
        (sp[:-1, :], sp[1:, :], across_y[:-1, :], across_y[1:, :]),
    ):
        m = (a != b) & (a > 0) & (b > 0)
        u_all.append(np.minimum(a[m], b[m]))
        v_all.append(np.maximum(a[m], b[m]))
        s_all.append(sa[m] | sb[m])
    key = np.concatenate(u_all) * n + np.concatenate(v_all)
    edges, inverse = np.unique(key, return_inverse=True)
    pairs = np.bincount(inverse)
    strips = np.bincount(inverse, weights=np.concatenate(s_all).astype("float64"))
    rag = graph.RAG()
    rag.add_nodes_from(int(k) for k in range(1, n) if count[k] > 0)
    rag.graph["within"] = within
    for k in rag.nodes:
        rag.nodes[k].update({"labels": [k], "n": count[k], "sum": sums[k], "w_sum": w_sum[k]})
    for e, p, st in zip(edges, pairs, strips, strict=True):
        u, v = int(e // n), int(e % n)
        rag.add_edge(u, v, pairs=int(p), strips=int(st))
        rag[u][v]["weight"] = _population_edge(rag, u, v, int(p), int(st))
    merged = graph.merge_hierarchical(
        sp,
        rag,
        thresh=UNIMODAL_MERGE_D,
        rag_copy=False,
        in_place_merge=True,
        merge_func=_add_node_sums,
        weight_func=_population_weight,
    )
    return np.where(sp > 0, merged + 1, 0).astype("int64")


def _merge_regions(
    sp: np.ndarray,
    edge: np.ndarray,
    merge_threshold: float,
    sar: np.ndarray | None,
    w_px: np.ndarray | None,
    sar_merge_db: float,
    apart: set[tuple[int, int]] | None = None,
) -> np.ndarray:
    """Hierarchical merging of superpixels ``sp`` (0 = outside) on boundary edge strength, with
    the SAR term of :func:`merge_weight` when ``sar`` (F, Y, X dB) and ``w_px`` (Y, X) are given.
    Region pairs in ``apart`` (from :func:`group_calm_markers`: pieces of one marker whose
    curves are two populations) never merge, nor do the regions they become.
    Returns labels numbered from 0 (merge_hierarchical's numbering)."""
    from skimage import graph

    rag = graph.rag_boundary(sp, edge.astype("float64"), connectivity=1)
    if rag.has_node(0):
        rag.remove_node(0)
    for u, v in apart or ():
        if rag.has_edge(u, v):
            rag[u][v]["weight"] = np.inf
    if sar is None or w_px is None:
        merge_func, weight_func = _boundary_merge, _boundary_weight
    else:
        _add_sar_curves(rag, sp, sar, w_px, merge_threshold, sar_merge_db)
        merge_func, weight_func = _sar_node_merge, _sar_boundary_weight
    return graph.merge_hierarchical(
        sp,
        rag,
        thresh=merge_threshold,
        rag_copy=False,
        in_place_merge=True,
        merge_func=merge_func,
        weight_func=weight_func,
    )


def _add_sar_curves(
    rag: Any,
    sp: np.ndarray,
    sar: np.ndarray,
    w_px: np.ndarray,
    merge_threshold: float,
    sar_merge_db: float,
) -> None:
    """Each node's SAR sums, counts, optical weight and size, and each edge's SAR-weighted
    boundary weight (:func:`merge_weight`), for :func:`_sar_node_merge`."""
    flat = sp.ravel()
    n = int(flat.max()) + 1
    px = np.bincount(flat, minlength=n).astype("float64")
    w_sum = np.bincount(flat, weights=w_px.ravel().astype("float64"), minlength=n)
    f = sar.reshape(sar.shape[0], -1)
    ok = np.isfinite(f)
    sums = np.stack(
        [
            np.bincount(flat, weights=np.where(o, v, 0.0), minlength=n)
            for v, o in zip(f, ok, strict=True)
        ],
        1,
    )
    counts = np.stack([np.bincount(flat, weights=o.astype("float64"), minlength=n) for o in ok], 1)
    for node in rag.nodes:
        rag.nodes[node].update(
            {"sar_sum": sums[node], "sar_n": counts[node], "w_sum": w_sum[node], "px": px[node]}
        )
    rag.graph.update(merge_threshold=merge_threshold, sar_merge_db=sar_merge_db)
    for u, v, d in rag.edges(data=True):
        d.update(_sar_edge_data(rag, u, v, float(d["weight"]), int(d["count"])))


def _color_merge(graph: Any, src: int, dst: int) -> None:
    g = graph.nodes
    g[dst]["total color"] += g[src]["total color"]
    g[dst]["pixel count"] += g[src]["pixel count"]
    g[dst]["mean color"] = g[dst]["total color"] / g[dst]["pixel count"]


def _color_weight(graph: Any, src: int, dst: int, n: int) -> dict[str, float]:
    """Distance of mean curves; regions of different dominant phenology class never merge."""
    if graph.nodes[dst]["cluster"] != graph.nodes[n]["cluster"]:
        return {"weight": np.inf}
    diff = graph.nodes[dst]["mean color"] - graph.nodes[n]["mean color"]
    return {"weight": float(np.linalg.norm(diff))}


def _adjacency(labels: np.ndarray) -> Any:
    """skimage RAG of the 4-connected adjacency of ``labels`` > 0 (numpy, no per-pixel callback)."""
    from skimage import graph

    pairs = [
        np.stack([labels[:, 1:].ravel(), labels[:, :-1].ravel()], axis=1),
        np.stack([labels[1:, :].ravel(), labels[:-1, :].ravel()], axis=1),
    ]
    p = np.concatenate(pairs)
    p = p[(p[:, 0] != p[:, 1]) & (p[:, 0] > 0) & (p[:, 1] > 0)]
    p = np.unique(np.sort(p, axis=1), axis=0)
    rag = graph.RAG()
    rag.add_nodes_from(int(n) for n in np.unique(labels) if n > 0)
    rag.add_edges_from((int(a), int(b)) for a, b in p)
    return rag


def _fill(labels: np.ndarray, edge: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """Grow ``labels`` (0 = to fill) over ``mask`` by a watershed of ``edge``."""
    from skimage.segmentation import watershed

    if labels.max() == 0:
        return labels
    return watershed(edge, labels, mask=mask).astype("int64")


def _drop_small(labels: np.ndarray, min_px: int) -> np.ndarray:
    sizes = np.bincount(labels.ravel())
    small = sizes < min_px
    small[0] = False
    out = labels.copy()
    out[small[labels]] = 0
    return out


def _mean_curves(labels: np.ndarray, curves: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(n+1, D) mean curve and (n+1,) pixel count per label of (D, Y, X) ``curves``."""
    flat = labels.ravel()
    n = int(flat.max()) + 1
    count = np.bincount(flat, minlength=n).astype("float64")
    sums = np.stack([np.bincount(flat, weights=ch.ravel(), minlength=n) for ch in curves], axis=1)
    return sums / np.maximum(count, 1)[:, None], count


def parcels_np(
    ndvi: np.ndarray,
    sar: np.ndarray | None = None,
    clear_dates: np.ndarray | None = None,
    *,
    edge_threshold: float = EDGE_THRESHOLD,
    merge_threshold: float = 0.035,
    strip_threshold: float = 0.04,
    coarse_threshold: float = 0.04,
    min_marker_px: int = 5,
    min_parcel_px: int = 20,
    min_peak_ndvi: float = 0.3,
    n_clusters: int = 10,
    seed: int = 0,
    sar_merge_db: float = SAR_MERGE_DB,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Fine ids, coarse ids (int32 (Y, X), 0 = not a parcel) and temporal edge strength (float32).

    ``ndvi``: (C, Y, X) calendar NDVI (NaN = never observed); ``sar``: (F, Y, X) calendar SAR
    curves in dB (VV and VH stacked, speckle-filtered) or None; ``clear_dates``: (Y, X) clear S2
    dates per pixel or None (both needed for the SAR term of the region merging, see
    :func:`merge_weight`; ``sar_merge_db`` its dB scale). Thresholds are NDVI differences:
    ``edge_threshold`` and ``merge_threshold`` on the edge strength (median over dates),
    ``coarse_threshold`` RMS over dates, ``strip_threshold`` on the border strip strength
    (:func:`border_strip_strength_np`); see the module docstring.
    """
    from skimage import graph, measure
    from skimage.segmentation import relabel_sequential, watershed
    from sklearn.cluster import MiniBatchKMeans
    from threadpoolctl import threadpool_limits

    curves = np.asarray(ndvi, dtype="float32")
    n_d, ny, nx = curves.shape
    valid = np.isfinite(curves).all(axis=0)
    edge = temporal_edge_strength_np(np.where(valid[None], curves, np.nan))
    empty = np.zeros((ny, nx), dtype="int32")
    if valid.sum() < max(min_parcel_px, n_clusters):
        return empty, empty.copy(), edge

    # Pixel clustering on the curves (fit on a subsample, predict every valid pixel).
    x = curves[:, valid].T
    step = max(1, x.shape[0] // 10_000)
    km = MiniBatchKMeans(n_clusters=n_clusters, random_state=seed, n_init=1, batch_size=4096)
    # One thread: a tile is one Dask task, the Dask workers are the parallelism (OpenMP
    # threads inside every task oversubscribe the cores).
    with threadpool_limits(1):
        km.fit(x[::step])
        cluster = np.zeros((ny, nx), dtype="int64")
        cluster[valid] = km.predict(x) + 1

    # Superpixels: low-edge areas, grown by watershed.
    markers = measure.label((edge < edge_threshold) & valid, connectivity=1)
    observed = None  # no clear-date counts: every curve taken as observed, no bridge cut
    w_px = None
    if clear_dates is not None:
        from pipelines.agri.features import optical_weight

        w_px = optical_weight(clear_dates, n_d)
        observed = w_px >= 1.0
    if sar is not None and w_px is not None:
        sar = np.asarray(sar, dtype="float32")
        if sar.ndim != 3 or sar.shape[1:] != (ny, nx) or not np.isfinite(sar).any():
            sar = None
        elif (w_px[valid] >= 1.0).all():
            sar = None  # every pixel fully observed: the optical segmentation alone, exactly
    apart: set[tuple[int, int]] = set()
    if observed is not None and not observed[valid].all():
        if sar is not None:
            markers, apart = calm_markers(markers, edge, valid, observed, sar, min_parcel_px)
        else:
            markers = split_thin_bridges(markers, min_parcel_px, observed)
    markers = _drop_small(markers, min_marker_px)
    sp = watershed(edge, markers, mask=valid).astype("int64")

    # Region merging on boundary strength (and, under cloud, on the regions' SAR curves).
    if len(np.unique(sp[sp > 0])) > 1:  # one region (or none) has nothing to merge with
        sp = _merge_regions(sp, edge, merge_threshold, sar, w_px, sar_merge_db, apart)
        sp = sp.astype("int64")
        sp = np.where(valid, sp + 1, 0)  # merge_hierarchical numbers from 0
    if sar is not None and w_px is not None:
        sp = split_by_sar(sp, edge, sar, w_px, 1.0, min_parcel_px)
    sp = _fill(_drop_small(sp, min_parcel_px), edge, valid)
    strips = border_strip_strength_np(np.where(valid[None], curves, np.nan), by_axis=True)
    strip = strips.max(axis=0)
    if sar is not None and w_px is not None and len(np.unique(sp[sp > 0])) > 1:
        sp = merge_one_population(sp, sar, w_px, strips >= strip_threshold)

    # Boundary refinement: the border strips leave their parcel.
    fine = np.where(valid & (strip >= strip_threshold), 0, sp)
    peak = np.full(fine.max() + 1, -np.inf)
    np.maximum.at(peak, fine[valid], np.asarray(ndvi, dtype="float32").max(axis=0)[valid])
    keep = peak >= min_peak_ndvi
    keep[0] = False
    fine = np.where(keep[fine], fine, 0)
    fine = cut_along_border_lines(fine, strip, strip_threshold, min_parcel_px)
    fine = measure.label(fine, background=0, connectivity=1)  # one piece per parcel
    fine = _drop_small(fine, max(1, min_parcel_px // 2))
    fine = relabel_sequential(fine)[0]

    # Coarse level: fine parcels with similar mean curves merged (a union of fine parcels).
    coarse = fine.copy()
    if fine.max() > 1:
        # Adjacency across the removed border pixels: fine parcels grown back over them.
        rag = _adjacency(_fill(fine, edge, valid))
        mean, count = _mean_curves(fine, curves * valid[None] / np.float32(np.sqrt(n_d)))
        k = n_clusters + 1
        votes = np.bincount(fine.ravel() * k + cluster.ravel(), minlength=(fine.max() + 1) * k)
        dominant = votes.reshape(-1, k)[:, 1:].argmax(axis=1)
        for n in rag.nodes:
            rag.nodes[n].update(
                {"labels": [n], "pixel count": count[n], "total color": mean[n] * count[n]}
            )
            rag.nodes[n]["mean color"] = mean[n].copy()
            rag.nodes[n]["cluster"] = int(dominant[n])
        for u, v, d in rag.edges(data=True):
            d.update(_color_weight(rag, u, u, v) if u != v else {"weight": np.inf})
        merged = graph.merge_hierarchical(
            fine,
            rag,
            thresh=coarse_threshold,
            rag_copy=False,
            in_place_merge=True,
            merge_func=_color_merge,
            weight_func=_color_weight,
        )
        coarse = np.where(fine > 0, merged + 1, 0)
        coarse = relabel_sequential(coarse)[0]
    return fine.astype("int32"), coarse.astype("int32"), edge


def _parcels_block(
    block: Any, with_sar: bool, ndvi: np.ndarray, *extra: np.ndarray, **kwargs: Any
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``block(ndvi, sar, clear_dates, **kwargs)`` from apply_ufunc's inputs: ``extra`` is
    (sar, clear_dates) when ``with_sar``, else (clear_dates,) or nothing."""
    if with_sar:
        return block(ndvi, extra[0], extra[1], **kwargs)
    return block(ndvi, None, extra[0] if extra else None, **kwargs)


def _ndvi_block(features: xr.Dataset) -> xr.DataArray:
    """The ndvi cube as (doy, y, x), one chunk (a tile is one block)."""
    ndvi = features["ndvi"].transpose("doy", "y", "x")
    if ndvi.chunks is not None:
        ndvi = ndvi.chunk({"doy": -1, "y": -1, "x": -1})
    return ndvi


def temporal_edge_strength(features: xr.Dataset) -> xr.DataArray:
    """(y, x) float32 temporal edge strength of the season cube's NDVI (NDVI units), lazily.

    See :func:`temporal_edge_strength_np`; the (y, x) plane is one block (a tile is the unit).
    """
    features = _check_features(features)
    out = xr.apply_ufunc(
        temporal_edge_strength_np,
        _ndvi_block(features),
        input_core_dims=[["doy", "y", "x"]],
        output_core_dims=[["y", "x"]],
        dask="parallelized",
        output_dtypes=["float32"],
    )
    return out.rename("temporal_edge_strength").assign_attrs(units="NDVI")


def parcels(
    features: xr.Dataset,
    *,
    edge_threshold: float = EDGE_THRESHOLD,
    merge_threshold: float = 0.035,
    strip_threshold: float = 0.04,
    coarse_threshold: float = 0.04,
    min_marker_px: int = 5,
    min_parcel_px: int = 20,
    min_peak_ndvi: float = 0.3,
    n_clusters: int = 10,
    seed: int = 0,
    sar_merge_db: float = SAR_MERGE_DB,
) -> xr.Dataset:
    """Parcel ids of one tile at two levels, lazily.

    ``features``: the :func:`pipelines.agri.features.season_features` cube (its ``ndvi``
    (doy, y, x) is used, and its ``sar_filtered`` (doy, pol, y, x, dB) and ``clear_dates``
    (y, x) when present: the SAR terms of the region merging, :func:`merge_weight` and
    :func:`split_by_sar`). Returns a Dataset on its (y, x) grid: ``fine`` and ``coarse`` int32
    ids (1..n local to the tile, 0 = not a parcel; every coarse parcel is a union of fine
    parcels) and ``temporal_edge_strength`` float32 (NDVI
    units). Thresholds are NDVI differences; the (y, x) plane is one block, so memory is bounded
    by the tile. See the module docstring for the method.
    """
    features = _check_features(features)
    for name, value in (
        ("edge_threshold", edge_threshold),
        ("merge_threshold", merge_threshold),
        ("strip_threshold", strip_threshold),
        ("coarse_threshold", coarse_threshold),
    ):
        _positive(name, value, 2.0)
    for name, value in (
        ("min_marker_px", min_marker_px),
        ("min_parcel_px", min_parcel_px),
        ("n_clusters", n_clusters),
    ):
        if isinstance(value, bool) or not isinstance(value, int | np.integer) or value < 1:
            raise BadInputError(name, value, "an integer >= 1")
    if not np.isfinite(min_peak_ndvi) or not -1.0 <= min_peak_ndvi <= 1.0:
        raise BadInputError("min_peak_ndvi", min_peak_ndvi, "an NDVI value in [-1, 1]")
    block = functools.partial(
        parcels_np,
        edge_threshold=float(edge_threshold),
        merge_threshold=float(merge_threshold),
        strip_threshold=float(strip_threshold),
        coarse_threshold=float(coarse_threshold),
        min_marker_px=int(min_marker_px),
        min_parcel_px=int(min_parcel_px),
        min_peak_ndvi=float(min_peak_ndvi),
        n_clusters=int(n_clusters),
        seed=int(seed),
    )

    _positive("sar_merge_db", sar_merge_db, 100.0)
    inputs = [_ndvi_block(features)]
    core = [["doy", "y", "x"]]
    with_sar = "sar_filtered" in features and "clear_dates" in features
    if with_sar:
        sar = (
            features["sar_filtered"].transpose("doy", "pol", "y", "x").stack(feature=("doy", "pol"))
        )
        sar = sar.drop_vars(["feature", "doy", "pol"], errors="ignore").transpose(
            "feature", "y", "x"
        )
        clear = features["clear_dates"].transpose("y", "x")
        if sar.chunks is not None:
            sar = sar.chunk({"feature": -1, "y": -1, "x": -1})
        if clear.chunks is not None:
            clear = clear.chunk({"y": -1, "x": -1})
        inputs += [sar, clear]
        core += [["feature", "y", "x"], ["y", "x"]]
    elif "clear_dates" in features:  # no SAR: the clear-date counts still mark cloud gaps
        clear = features["clear_dates"].transpose("y", "x")
        if clear.chunks is not None:
            clear = clear.chunk({"y": -1, "x": -1})
        inputs.append(clear)
        core.append(["y", "x"])
    fine, coarse, edge = xr.apply_ufunc(
        functools.partial(_parcels_block, block, with_sar, sar_merge_db=float(sar_merge_db)),
        *inputs,
        input_core_dims=core,
        output_core_dims=[["y", "x"]] * 3,
        dask="parallelized",
        output_dtypes=["int32", "int32", "float32"],
    )
    out = xr.Dataset(
        {
            "fine": fine.assign_attrs(long_name="fine parcel id (0: not a parcel)"),
            "coarse": coarse.assign_attrs(long_name="coarse parcel id (0: not a parcel)"),
            "temporal_edge_strength": edge.assign_attrs(units="NDVI"),
        }
    )
    out.attrs.update(
        {k: v for k, v in features.attrs.items() if k in ("crs", "epsg", "transform", "season")}
    )
    out.attrs["method"] = "edge-strength superpixels, boundary RAG merging; coarse by curve RAG"
    return out
