"""Geometry of the layer-level treemap (layouts/treemap.py), checked against independent
set computations: exact tiling, areas proportional to set sizes, the inclusion hierarchy,
and Eq. 6 (the summed squared distance of the shared regions to their targets is the
minimum over every candidate placement, found here by an independent brute force)."""

import itertools
import math

import numpy as np
import pytest
from hypothesis import given, settings, strategies as st

from tensorboard_plugin_aevis.layouts.treemap import Rect, build_treemap

TOL = 1e-6


def area(r: Rect) -> float:
    return r.dx * r.dy


def inside(inner: Rect, outer: Rect) -> bool:
    return (inner.x >= outer.x - TOL and inner.y >= outer.y - TOL
            and inner.x + inner.dx <= outer.x + outer.dx + TOL
            and inner.y + inner.dy <= outer.y + outer.dy + TOL)


def overlap(a: Rect, b: Rect) -> float:
    w = min(a.x + a.dx, b.x + b.dx) - max(a.x, b.x)
    h = min(a.y + a.dy, b.y + b.dy) - max(a.y, b.y)
    return max(w, 0.0) * max(h, 0.0)


def assert_tiles(children, frame: Rect):
    """``children`` lie inside ``frame``, do not overlap, and cover its area."""
    for c in children:
        assert inside(c, frame), (c, frame)
        assert c.dx > 0 and c.dy > 0
    for a, b in itertools.combinations(children, 2):
        assert overlap(a, b) <= TOL * area(frame), (a, b)
    assert math.isclose(sum(area(c) for c in children), area(frame), rel_tol=1e-9)


memberships_strategy = st.integers(1, 5).flatmap(
    lambda k: st.integers(1, 80).flatmap(
        lambda c: st.lists(st.lists(st.booleans(), min_size=c, max_size=c), min_size=k, max_size=k)))


@settings(max_examples=60, deadline=None)
@given(memberships_strategy, st.floats(50, 1000), st.floats(50, 1000))
def test_cells_tile_the_rectangle_with_areas_proportional_to_set_sizes(rows, width, height):
    m = np.array(rows, dtype=bool)
    tm = build_treemap(m, width, height)
    union = np.flatnonzero(m.any(axis=0))
    if union.size == 0:
        assert tm.cells == [] and tm.regions == [] and tm.containers == []
        return
    unit = width * height / union.size  # area of one feature map
    frame = Rect(0, 0, width, height)

    assert_tiles([c.rect for c in tm.containers], frame)
    for container in tm.containers:
        owned = [r for r in tm.regions if r.owner == container.member]
        assert_tiles([r.rect for r in owned], container.rect)
        assert math.isclose(area(container.rect), container.size * unit, rel_tol=1e-9)
    for region in tm.regions:
        cells = [c for c in tm.cells if c.members == region.members]
        assert_tiles([c.rect for c in cells], region.rect)
        assert math.isclose(area(region.rect), len(region.channels) * unit, rel_tol=1e-9)

    # every channel of any set once, with exactly the sets that contain it
    assert sorted(c.channel for c in tm.cells) == union.tolist()
    for cell in tm.cells:
        assert cell.members == tuple(np.flatnonzero(m[:, cell.channel]).tolist())
        assert math.isclose(area(cell.rect), unit, rel_tol=1e-9)

    # one region per non-empty intersection pattern, inside the largest of its sets
    patterns = {tuple(np.flatnonzero(m[:, c]).tolist()) for c in union}
    assert {r.members for r in tm.regions} == patterns
    sizes = m.sum(axis=1)
    for region in tm.regions:
        largest = max(int(sizes[i]) for i in region.members)
        assert sizes[region.owner] == largest and region.owner == min(i for i in region.members if sizes[i] == largest)


@settings(max_examples=60, deadline=None)
@given(memberships_strategy)
def test_eq6_sum_never_worse_than_plain_squarify(rows):
    m = np.array(rows, dtype=bool)
    optimised, plain = build_treemap(m), build_treemap(m, optimise=False)
    # the targets are the same: containers do not move
    assert [c.rect for c in optimised.containers] == [c.rect for c in plain.containers]
    d_opt, d_plain = optimised.eq6_distances(), plain.eq6_distances()
    assert d_opt.keys() == d_plain.keys()
    assert sum(v * v for v in d_opt.values()) <= sum(v * v for v in d_plain.values()) + 1e-6
    # the same, computed independently from the cells: the centroid of each shared
    # region's (equal-area) cells against the mean centre of the containers of its sets
    def shared_distances(tm):
        centres = {c.member: c.rect.centre for c in tm.containers}
        out = {}
        for pattern in {c.members for c in tm.cells if len(c.members) >= 2}:
            cells = [c.rect.centre for c in tm.cells if c.members == pattern]
            parents = [centres[i] for i in pattern if i in centres]
            target = np.mean(parents, axis=0)
            out[pattern] = float(np.hypot(*(np.mean(cells, axis=0) - target)))
        return out

    independent_opt = shared_distances(optimised)
    assert independent_opt.keys() == {p for p in d_opt}
    for pattern, distance in independent_opt.items():
        assert distance == pytest.approx(d_opt[pattern], abs=1e-6)
    # the search keeps squarify's quality within the documented bound
    if plain.regions:
        worst_plain = max(r.rect.aspect for r in plain.regions)
        assert max(r.rect.aspect for r in optimised.regions) <= 2.0 * worst_plain + 1e-6


def brute_force_eq6(m, width=600.0, height=400.0):
    """Minimum Eq. 6 sum over every region order x 8 symmetric placements per container
    (within the aspect bound), with the squarify package itself: an independent search."""
    import squarify

    plain = build_treemap(m, width, height, optimise=False)
    centres = {c.member: c.rect.centre for c in plain.containers}
    total = 0.0
    for container in plain.containers:
        regions = [r for r in plain.regions if r.owner == container.member]
        f = container.rect
        shared = [r for r in regions if len(r.members) >= 2]
        if not shared:
            continue
        target = {r.members: np.mean([centres[i] for i in r.members if i in centres], axis=0) for r in shared}
        limit = 2.0 * max(r.rect.aspect for r in regions)
        best = math.inf
        for order in itertools.permutations(regions):
            sizes = [len(r.channels) for r in order]
            for transpose in (False, True):
                fx0, fy0, fdx, fdy = (f.y, f.x, f.dy, f.dx) if transpose else (f.x, f.y, f.dx, f.dy)
                rects = squarify.squarify(squarify.normalize_sizes(sizes, fdx, fdy), fx0, fy0, fdx, fdy)
                rects = [(r["y"], r["x"], r["dy"], r["dx"]) if transpose else (r["x"], r["y"], r["dx"], r["dy"]) for r in rects]
                if max(max(dx, dy) / min(dx, dy) for _, _, dx, dy in rects) > limit + 1e-9:
                    continue
                for flip_x in (False, True):
                    for flip_y in (False, True):
                        s = 0.0
                        for r, (x, y, dx, dy) in zip(order, rects):
                            if len(r.members) < 2:
                                continue
                            cx = (2 * f.x + f.dx - x - dx if flip_x else x) + dx / 2
                            cy = (2 * f.y + f.dy - y - dy if flip_y else y) + dy / 2
                            s += (cx - target[r.members][0]) ** 2 + (cy - target[r.members][1]) ** 2
                        best = min(best, s)
        total += best
    return total


def test_eq6_placement_is_the_minimum_over_all_candidates_on_random_three_set_layers():
    rng = np.random.default_rng(11)
    for _ in range(25):
        m = rng.random((3, 90)) < rng.uniform(0.2, 0.7)
        found = sum(v * v for v in build_treemap(m).eq6_distances().values())
        assert found == pytest.approx(brute_force_eq6(m), rel=1e-9, abs=1e-6)


def test_eq6_moves_a_shared_region_towards_the_sets_sharing_it():
    # A = 0..79, B = 20..99: A owns {A and B} (60) and {A only} (20), B owns {B only} (20);
    # plain squarify puts the shared region first, at the far (left) side of A
    m = np.zeros((2, 100), dtype=bool)
    m[0, 0:80] = True
    m[1, 20:100] = True
    optimised, plain = build_treemap(m, 600, 400), build_treemap(m, 600, 400, optimise=False)
    target = optimised.eq6_target((0, 1))
    (x, y), (px, py) = optimised.regions[0].rect.centre, plain.regions[0].rect.centre
    assert optimised.regions[0].members == (0, 1)
    # independent computation of the target: mean of the two container centres
    a = [c for c in optimised.containers if c.member == 0][0].rect
    b = [c for c in optimised.containers if c.member == 1][0].rect
    assert target == pytest.approx(((a.x + a.dx / 2 + b.x + b.dx / 2) / 2, (a.y + a.dy / 2 + b.y + b.dy / 2) / 2))
    d_opt = math.hypot(x - target[0], y - target[1])
    d_plain = math.hypot(px - target[0], py - target[1])
    assert d_opt < 0.8 * d_plain, (d_opt, d_plain)


def test_eq6_improves_most_random_three_way_layers():
    rng = np.random.default_rng(7)
    improved = 0
    for _ in range(20):
        m = rng.random((3, 120)) < 0.45
        d_opt = build_treemap(m).eq6_distances()
        d_plain = build_treemap(m, optimise=False).eq6_distances()
        improved += sum(v * v for v in d_opt.values()) < sum(v * v for v in d_plain.values()) - 1e-6
    assert improved >= 10


def test_subset_without_unique_channels_has_no_container_and_sits_in_the_larger_set():
    m = np.zeros((2, 10), dtype=bool)
    m[0, :8] = True
    m[1, 2:5] = True  # B is a subset of A
    tm = build_treemap(m, 100, 100)
    assert [c.member for c in tm.containers] == [0]
    assert {r.members for r in tm.regions} == {(0,), (0, 1)}
    assert tm.eq6_target((0, 1)) == pytest.approx(tm.containers[0].rect.centre)


@pytest.mark.parametrize("bad, message", [
    (np.zeros(5, dtype=bool), "expected \\(k datapaths, C channels\\)"),
    (np.full((2, 3), 2), "must be boolean"),
    (np.zeros((0, 4), dtype=bool), "at least one datapath"),
])
def test_bad_memberships_are_named(bad, message):
    with pytest.raises(ValueError, match=message):
        build_treemap(bad)


@pytest.mark.parametrize("width, height", [(0, 10), (10, -1), (float("nan"), 10), (float("inf"), 5)])
def test_bad_size_is_named(width, height):
    with pytest.raises(ValueError, match="width and height must be positive finite"):
        build_treemap(np.ones((1, 3), dtype=bool), width, height)


@settings(max_examples=300, deadline=None)
@given(
    sizes=st.one_of(
        st.integers(1, 300).map(lambda n: [1.0] * n),  # equal cells, as in every region
        st.lists(st.floats(0.01, 100.0), min_size=1, max_size=60),  # any order
        st.lists(st.integers(1, 4).map(float), min_size=1, max_size=80),  # many ties
    ),
    dx=st.floats(1.0, 900.0), dy=st.floats(1.0, 900.0), x=st.floats(-50.0, 50.0), y=st.floats(-50.0, 50.0),
)
def test_linear_squarify_is_bit_identical_to_the_package(sizes, dx, dy, x, y):
    """``squarify_rows`` is a linear-time rewrite of ``squarify.squarify``: the same rectangles, exactly."""
    import squarify

    from tensorboard_plugin_aevis.layouts.treemap import squarify_rows

    normed = squarify.normalize_sizes(list(sizes), dx, dy)
    expected = [(r["x"], r["y"], r["dx"], r["dy"]) for r in squarify.squarify(normed, x, y, dx, dy)]
    assert squarify_rows(normed, x, y, dx, dy) == expected
