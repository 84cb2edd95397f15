"""Block-sparse ``ranges``, shared by the backends: their validation, and their copy on the host
(every backend plans its blocks from NumPy int64 arrays)."""

from __future__ import annotations

import numpy as np

from .arrays import find


def to_host(r) -> np.ndarray:
    """A ranges array as a NumPy int64 array (arrays on a device are copied)."""
    ad = find(r)
    return np.asarray(r if ad is None else ad.to_host(r), dtype=np.int64)


def overlapping(ranges: np.ndarray) -> tuple[int, int] | None:
    """Positions of two intervals of ``ranges`` (shape ``(C, 2)``) that share an index, or None.

    Empty intervals (start == end) share nothing.
    """
    starts, ends = ranges[:, 0], ranges[:, 1]
    live = np.flatnonzero(ends > starts)
    if len(live) < 2:
        return None
    order = live[np.argsort(starts[live], kind="stable")]
    clash = np.flatnonzero(ends[order[:-1]] > starts[order[1:]])
    if not len(clash):
        return None
    return int(order[clash[0]]), int(order[clash[0] + 1])


def structure_error(ranges: np.ndarray, slices: np.ndarray, red: np.ndarray, label: str) -> str | None:
    """What is wrong with one half ``(ranges_x, slices_x, redranges_y)`` of a ranges tuple (one
    batch element, host arrays), or None: intervals must not run backwards, the ``x``-ranges
    must not overlap (each row is reduced once), ``slices_x`` must not decrease, and the
    intervals one range reduces over must not overlap (no pair counted twice)."""
    other = "j" if label == "i" else "i"
    for name, iv in ((f"ranges_{label}", ranges), (f"redranges_{other}", red)):
        back = np.flatnonzero(iv[:, 1] < iv[:, 0])
        if len(back):
            k = int(back[0])
            return f"{name}[{k}] = [{iv[k, 0]}, {iv[k, 1]}) ends before it starts"
    pair = overlapping(ranges)
    if pair is not None:
        a, b = pair
        return (
            f"ranges_{label}[{a}] = [{ranges[a, 0]}, {ranges[a, 1]}) and ranges_{label}[{b}] = "
            f"[{ranges[b, 0]}, {ranges[b, 1]}) overlap: each row must belong to one range at most"
        )
    if len(slices) and (slices[0] < 0 or np.any(np.diff(slices) < 0)):
        return f"slices_{label} must be non-decreasing end positions in redranges_{other}"
    # the intervals of one range must not overlap: cheap when each range lists them in order
    # (as from_matrix does), a sort by (range, start) otherwise
    red = red[: int(slices[-1]) if len(slices) else 0]
    owner = np.repeat(np.arange(len(slices)), np.diff(slices, prepend=0))
    live = np.flatnonzero(red[:, 1] > red[:, 0])
    if len(live) < 2:
        return None
    in_order = (owner[live[:-1]] != owner[live[1:]]) | (red[live[:-1], 1] <= red[live[1:], 0])
    if in_order.all():
        return None
    order = live[np.lexsort((red[live, 0], owner[live]))]
    same = owner[order[:-1]] == owner[order[1:]]
    clash = np.flatnonzero(same & (red[order[:-1], 1] > red[order[1:], 0]))
    if len(clash):
        a, b = int(order[clash[0]]), int(order[clash[0] + 1])
        return (
            f"ranges_{label}[{int(owner[a])}] reduces over overlapping intervals redranges_{other}[{a}] = "
            f"[{red[a, 0]}, {red[a, 1]}) and redranges_{other}[{b}] = [{red[b, 0]}, {red[b, 1]}): "
            "pairs would be counted twice"
        )
    return None


def ranges_error(ranges, ni: int, nj: int) -> str | None:
    """What is wrong with the values of pykeops' 6-tuple ``ranges`` (shapes already checked) for
    an ``ni x nj`` reduction, or None: bounds, then :func:`structure_error` per batch element."""
    for k, (label, nrows, ncols) in enumerate((("i", ni, nj), ("j", nj, ni))):
        other = "j" if label == "i" else "i"
        hx, hs, hy = (to_host(r) for r in ranges[3 * k : 3 * k + 3])
        if hx.size and (hx.max() > nrows or hx.min() < 0):
            return f"ranges_{label} must lie in [0, {nrows}]"
        if hy.size and (hy.max() > ncols or hy.min() < 0):
            return f"redranges_{other} must lie in [0, {ncols}]"
        if hs.size and hs.max() > hy.shape[-2]:
            return f"slices_{label} points past the end of its reduction ranges"
        lead = np.broadcast_shapes(hx.shape[:-2], hs.shape[:-1], hy.shape[:-2])
        for idx in np.ndindex(*lead):
            problem = structure_error(_at(hx, 2, idx), _at(hs, 1, idx), _at(hy, 2, idx), label)
            if problem is not None:
                return problem + (f" (batch element {idx})" if idx else "")
    return None


def _at(h: np.ndarray, core: int, idx: tuple) -> np.ndarray:
    """Batch element ``idx`` of ``h`` (``core`` trailing dimensions; size-1 batch axes broadcast)."""
    if h.ndim == core:
        return h
    return h[tuple(0 if h.shape[k] == 1 else i for k, i in enumerate(idx))]
