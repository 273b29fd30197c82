"""Treemap of the feature-map sets of k datapaths at one layer (paper Sec. 5.3, Eq. 6).

Input: ``memberships``, a (k, C) bool array; row i is datapath i's set A_i of the C
feature maps of the layer. Construction:

1. Regions: every non-empty intersection pattern P (a tuple of datapath positions);
   region R_P holds the channels that are in exactly the sets of P. Every channel in
   any set lies in exactly one region.
2. Hierarchy by set inclusion: region R_P is placed inside the *owner* of P, the
   largest set among those of P (ties: the lower position). Each set owning at least
   one region gets a top-level *container*; its size is the number of channels in the
   regions it owns (so shared parts sit inside the largest set, Fig. 7 (c)).
3. Squarified layout (Bruls et al.; ``squarify_rows``: the ``squarify`` package's layout,
   bit-identical, in linear time): containers tile the rectangle,
   regions tile their container, one equal-area cell per channel tiles its region.
   Sizes are in channels, so every cell has area ``width * height / n_channels``.
4. Eq. 6: every shared region (|P| >= 2) should lie near the mean of the centres of
   the sets that share it. The centre of set j is the centre of its container (sets
   without a container, i.e. subsets with no unique channel, are left out of the mean;
   the owner always has one). Containers are fixed by step 3, so the objective splits
   per container. In each container the candidates are (a) the order in which its
   regions are fed to ``squarify`` and (b) eight symmetric placements (the frame or its
   transpose, each mirrored left-right and / or top-bottom), among those whose worst
   region aspect ratio stays within ``max_aspect_growth`` times the plain one. With at
   most ``EXHAUSTIVE_REGIONS`` regions every order is tried, so the summed squared
   distance is the minimum over all candidates; with more, a local search (move one
   region to another slot) from the size-sorted order. Tiling and areas are exact for
   any order.
"""

from __future__ import annotations

import dataclasses
import itertools
import math
from typing import Dict, List, Optional, Sequence, Tuple

import numpy as np
import squarify

Pattern = Tuple[int, ...]
EXHAUSTIVE_REGIONS = 6  # 6! = 720 orders x 2 squarify calls: a few ms per container


@dataclasses.dataclass(frozen=True)
class Rect:
    """An axis-aligned rectangle in pixels; (x, y) is the top-left corner."""

    x: float
    y: float
    dx: float
    dy: float

    @property
    def centre(self) -> Tuple[float, float]:
        return (self.x + self.dx / 2.0, self.y + self.dy / 2.0)

    @property
    def aspect(self) -> float:
        """Longer side over shorter side (>= 1)."""
        lo, hi = sorted((self.dx, self.dy))
        return hi / lo if lo > 0 else math.inf

    def mirrored(self, frame: "Rect", flip_x: bool, flip_y: bool) -> "Rect":
        """This rectangle reflected inside ``frame`` (left-right and / or top-bottom)."""
        x = 2 * frame.x + frame.dx - self.x - self.dx if flip_x else self.x
        y = 2 * frame.y + frame.dy - self.y - self.dy if flip_y else self.y
        return Rect(x, y, self.dx, self.dy)


@dataclasses.dataclass(frozen=True)
class Container:
    """Top-level cell of datapath ``member``: the regions it owns."""

    member: int
    size: int  # channels placed inside
    rect: Rect


@dataclasses.dataclass(frozen=True)
class Region:
    """Channels in exactly the sets of ``members``, placed inside container ``owner``."""

    members: Pattern
    owner: int
    channels: Tuple[int, ...]
    rect: Rect

    @property
    def shared(self) -> bool:
        return len(self.members) >= 2


@dataclasses.dataclass(frozen=True)
class Cell:
    """One feature map (channel) of a region."""

    channel: int
    members: Pattern
    rect: Rect


@dataclasses.dataclass
class Treemap:
    """The whole layout: containers tile (0, 0, width, height), regions tile their
    container, cells tile their region."""

    width: float
    height: float
    containers: List[Container]
    regions: List[Region]
    cells: List[Cell]

    def set_centre(self, member: int) -> Optional[Tuple[float, float]]:
        """Centre of datapath ``member``'s container, or None when it owns nothing."""
        for c in self.containers:
            if c.member == member:
                return c.rect.centre
        return None

    def eq6_target(self, members: Pattern) -> Tuple[float, float]:
        """Mean of the container centres of the sets in ``members`` that have one."""
        centres = [c for c in (self.set_centre(m) for m in members) if c is not None]
        return (float(np.mean([c[0] for c in centres])), float(np.mean([c[1] for c in centres])))

    def eq6_distances(self) -> Dict[Pattern, float]:
        """Distance of each shared region's centre to its Eq. 6 target, in pixels."""
        out = {}
        for r in self.regions:
            if r.shared:
                (x, y), (tx, ty) = r.rect.centre, self.eq6_target(r.members)
                out[r.members] = math.hypot(x - tx, y - ty)
        return out


def build_treemap(
    memberships: np.ndarray,
    width: float = 600.0,
    height: float = 400.0,
    optimise: bool = True,
    max_aspect_growth: float = 2.0,
    max_rounds: int = 20,
) -> Treemap:
    """Treemap of the sets in ``memberships`` ((k, C) bool) in a ``width`` x ``height``
    rectangle. ``optimise=False`` gives the plain size-sorted squarified placement."""
    memberships = _check_memberships(memberships)
    if not (math.isfinite(width) and math.isfinite(height) and width > 0 and height > 0):
        raise ValueError(f"treemap size {width} x {height} is invalid: width and height must be positive finite numbers")
    set_sizes = memberships.sum(axis=1)
    channels_of: Dict[Pattern, List[int]] = {}
    for channel in np.flatnonzero(memberships.any(axis=0)):
        pattern = tuple(int(i) for i in np.flatnonzero(memberships[:, channel]))
        channels_of.setdefault(pattern, []).append(int(channel))
    if not channels_of:
        return Treemap(float(width), float(height), [], [], [])

    def owner_of(pattern: Pattern) -> int:
        return min(pattern, key=lambda i: (-int(set_sizes[i]), i))

    owned: Dict[int, List[Pattern]] = {}
    for pattern in channels_of:
        owned.setdefault(owner_of(pattern), []).append(pattern)
    for patterns in owned.values():
        patterns.sort(key=lambda p: (-len(channels_of[p]), p))

    # step 3a: containers, size-sorted
    members = sorted(owned, key=lambda m: (-sum(len(channels_of[p]) for p in owned[m]), m))
    container_sizes = [sum(len(channels_of[p]) for p in owned[m]) for m in members]
    frame = Rect(0.0, 0.0, float(width), float(height))
    containers = [Container(m, s, r) for m, s, r in zip(members, container_sizes, _squarify(container_sizes, frame))]
    centre_of = {c.member: c.rect.centre for c in containers}

    # step 3b + 4: regions inside each container
    regions: List[Region] = []
    for container in containers:
        patterns = owned[container.member]
        targets = {}
        for p in patterns:
            if len(p) >= 2:
                centres = [centre_of[m] for m in p if m in centre_of]
                targets[p] = (float(np.mean([c[0] for c in centres])), float(np.mean([c[1] for c in centres])))
        sizes = {p: len(channels_of[p]) for p in patterns}
        placement = _place_regions(patterns, sizes, targets, container.rect, optimise, max_aspect_growth, max_rounds)
        for p in patterns:
            regions.append(Region(p, container.member, tuple(channels_of[p]), placement[p]))

    # step 3c: one equal-area cell per channel inside each region
    cells: List[Cell] = []
    for region in regions:
        rects = _squarify([1.0] * len(region.channels), region.rect)
        cells.extend(Cell(ch, region.members, r) for ch, r in zip(region.channels, rects))
    return Treemap(float(width), float(height), containers, regions, cells)


def _check_memberships(memberships: np.ndarray) -> np.ndarray:
    a = np.asarray(memberships)
    if a.ndim != 2:
        raise ValueError(f"memberships have shape {a.shape}; expected (k datapaths, C channels)")
    if a.shape[0] < 1:
        raise ValueError("memberships need at least one datapath (one row)")
    if a.dtype != bool:
        if not np.isin(a, (0, 1)).all():
            raise ValueError("memberships must be boolean (or 0 / 1): row i marks the channels in datapath i")
        a = a.astype(bool)
    return a


def _squarify(sizes: Sequence[float], frame: Rect) -> List[Rect]:
    """``squarify`` in ``frame`` for positive ``sizes`` in any order (areas exact)."""
    normed = squarify.normalize_sizes(list(sizes), frame.dx, frame.dy)
    return [Rect(*r) for r in squarify_rows(normed, frame.x, frame.y, frame.dx, frame.dy)]


def squarify_rows(sizes: Sequence[float], x: float, y: float, dx: float, dy: float) -> List[Tuple[float, float, float, float]]:
    """``squarify.squarify(sizes, x, y, dx, dy)`` as (x, y, dx, dy) tuples, in linear time.

    The package re-lays out the whole current row for every size it tries to add
    (quadratic in the row length: 160 ms for 2000 equal cells). A row's worst aspect
    ratio only depends on its sum and its smallest and largest size (the ratio of one
    rectangle is monotone on either side), so here it is kept incrementally, with the
    package's own floating-point expressions: the rectangles are bit-identical.
    """
    sizes = [float(v) for v in sizes]
    out: List[Tuple[float, float, float, float]] = []
    start = 0
    while start < len(sizes):
        horizontal = dx >= dy  # the package's layoutrow (a column of height dy) vs layoutcol

        def worst(total: float, lo: float, hi: float) -> float:
            side = total / dy if horizontal else total / dx
            return max(side / (lo / side), (hi / side) / side)

        total, lo, hi = sizes[start], sizes[start], sizes[start]
        end = start + 1
        if len(sizes) - start > 1:
            current = worst(total, lo, hi)
            while end < len(sizes):
                s = sizes[end]
                following = worst(total + s, min(lo, s), max(hi, s))
                if current < following:
                    break
                total, lo, hi, current = total + s, min(lo, s), max(hi, s), following
                end += 1
        row = sizes[start:end]
        covered = sum(row)
        if horizontal:
            width = covered / dy
            yy = y
            for size in row:
                out.append((x, yy, width, size / width))
                yy += size / width
            x, dx = x + width, dx - width
        else:
            height = covered / dx
            xx = x
            for size in row:
                out.append((xx, y, size / height, height))
                xx += size / height
            y, dy = y + height, dy - height
        start = end
    return out


def _place_regions(
    patterns: List[Pattern],
    sizes: Dict[Pattern, int],
    targets: Dict[Pattern, Tuple[float, float]],
    frame: Rect,
    optimise: bool,
    max_aspect_growth: float,
    max_rounds: int,
) -> Dict[Pattern, Rect]:
    """Rectangles of ``patterns`` (given size-sorted) inside ``frame``; with
    ``optimise``, the Eq. 6 local search described in the module docstring.

    A candidate is an order plus one of eight symmetric placements: squarify in the
    frame or in the transposed frame (axes swapped back), each mirrored left-right and /
    or top-bottom. Mirroring keeps every rectangle's sides, so the aspect test is done
    once per squarify call, and only the shared regions' centres are mirrored to score.
    """
    swapped = Rect(frame.y, frame.x, frame.dy, frame.dx)

    def bases(order: Sequence[Pattern]) -> Tuple[List[Rect], List[Rect]]:
        sized = [sizes[p] for p in order]
        return _squarify(sized, frame), [Rect(r.y, r.x, r.dy, r.dx) for r in _squarify(sized, swapped)]

    plain = dict(zip(patterns, bases(patterns)[0]))
    if not optimise or not targets:
        return plain
    aspect_limit = max_aspect_growth * max(r.aspect for r in plain.values())
    mirrors = [(fx, fy) for fx in (False, True) for fy in (False, True)]

    def score(rects: Dict[Pattern, Rect], flip_x: bool, flip_y: bool) -> float:
        """Eq. 6: the summed squared distances of the shared regions to their targets."""
        total = 0.0
        for p, (tx, ty) in targets.items():
            x, y = rects[p].mirrored(frame, flip_x, flip_y).centre
            total += (x - tx) ** 2 + (y - ty) ** 2
        return total

    best: Tuple[float, List[Pattern], Tuple[int, bool, bool]] = (score(plain, False, False), list(patterns), (0, False, False))

    def consider(order: List[Pattern]) -> bool:
        nonlocal best
        improved = False
        for base, rects in enumerate(bases(order)):
            if max(r.aspect for r in rects) > aspect_limit + 1e-9:
                continue  # the same for all four mirror images
            by_pattern = dict(zip(order, rects))
            for fx, fy in mirrors:
                s = score(by_pattern, fx, fy)
                if s < best[0] - 1e-9:
                    best, improved = (s, order, (base, fx, fy)), True
        return improved

    if len(patterns) <= EXHAUSTIVE_REGIONS:
        for order in itertools.permutations(patterns):
            consider(list(order))
    else:
        for _ in range(max_rounds):
            current = best[1]
            improved = False
            for i in range(len(current)):
                for j in range(len(current)):
                    if i != j:
                        order = list(current)
                        order.insert(j, order.pop(i))
                        improved |= consider(order)
            if not improved:
                break
    _, order, (base, fx, fy) = best
    return {p: r.mirrored(frame, fx, fy) for p, r in zip(order, bases(order)[base])}
