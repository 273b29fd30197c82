import { test } from "node:test";
import assert from "node:assert/strict";
import { countCrossings, layoutDag, longestPathRanks, topologicalOrder } from "../src/dagLayout";

const box = (id: string, width = 30, height = 20) => ({ id, width, height });

test("topological order respects every edge and cycles are rejected", () => {
  const edges = [{ source: "c", target: "d" }, { source: "a", target: "c" }, { source: "b", target: "c" }];
  const order = topologicalOrder(["d", "c", "b", "a"], edges);
  for (const e of edges) assert.ok(order.indexOf(e.source) < order.indexOf(e.target));
  assert.throws(() => topologicalOrder(["a", "b"], [{ source: "a", target: "b" }, { source: "b", target: "a" }]), /cycle/);
  assert.throws(() => topologicalOrder(["a"], [{ source: "a", target: "z" }]), /unknown node/);
});

test("ranks are longest-path lengths (a skip edge does not shorten the path)", () => {
  const edges = [
    { source: "in", target: "a" }, { source: "a", target: "b" }, { source: "b", target: "add" },
    { source: "in", target: "add" }, { source: "add", target: "out" },
  ];
  const ranks = longestPathRanks(["in", "a", "b", "add", "out"], edges);
  assert.deepEqual(Object.fromEntries(ranks), { in: 0, a: 1, b: 2, add: 3, out: 4 });
});

test("countCrossings counts crossing segment pairs between adjacent ranks", () => {
  assert.equal(countCrossings([["a", "b"], ["c", "d"]], [["a", "d"], ["b", "c"]]), 1);
  assert.equal(countCrossings([["a", "b"], ["c", "d"]], [["a", "c"], ["b", "d"]]), 0);
});

test("layout places every edge left to right, nodes without overlap, and routes skips around", () => {
  const ids = ["in", "a", "b", "add", "out"];
  const edges = [
    { source: "in", target: "a" }, { source: "a", target: "b" }, { source: "b", target: "add" },
    { source: "in", target: "add" }, { source: "add", target: "out" },
  ];
  const layout = layoutDag(ids.map((id) => box(id)), edges, { rankGap: 10, rowGap: 5 });
  for (const e of layout.edges) {
    const s = layout.nodes.get(e.source)!;
    const t = layout.nodes.get(e.target)!;
    assert.ok(s.x + s.width / 2 <= t.x - t.width / 2, `${e.source} is not left of ${e.target}`);
    assert.deepEqual(e.points[0], [s.x + s.width / 2, s.y]);
    assert.deepEqual(e.points[e.points.length - 1], [t.x - t.width / 2, t.y]);
  }
  const skip = layout.edges.find((e) => e.source === "in" && e.target === "add")!;
  assert.equal(skip.points.length, 4); // two dummy points for ranks 1 and 2
  // The chain is on one row; the skip edge's dummies sit on another row.
  assert.equal(new Set(ids.map((id) => layout.nodes.get(id)!.y)).size, 1);
  assert.notEqual(skip.points[1][1], layout.nodes.get("a")!.y);
  const placed = [...layout.nodes.values()];
  for (let i = 0; i < placed.length; i++)
    for (let j = i + 1; j < placed.length; j++) {
      const p = placed[i];
      const q = placed[j];
      const apart = Math.abs(p.x - q.x) >= (p.width + q.width) / 2 || Math.abs(p.y - q.y) >= (p.height + q.height) / 2;
      assert.ok(apart, `${p.id} overlaps ${q.id}`);
    }
  assert.equal(layout.width, 5 * 30 + 4 * 10);
  for (const n of placed) {
    assert.ok(n.x - n.width / 2 >= 0 && n.x + n.width / 2 <= layout.width);
    assert.ok(n.y - n.height / 2 >= 0 && n.y + n.height / 2 <= layout.height);
  }
});

test("barycentre sweeps remove avoidable crossings", () => {
  // Two parallel chains given in an order that crosses at rank 1.
  const edges = [
    { source: "a0", target: "b1" }, { source: "b0", target: "a1" },
    { source: "b1", target: "b2" }, { source: "a1", target: "a2" },
  ];
  const layout = layoutDag(["a0", "b0", "a1", "b1", "a2", "b2"].map((id) => box(id)), edges);
  const row = (id: string) => layout.nodes.get(id)!.row;
  assert.equal(row("a0"), row("b1"));
  assert.equal(row("b0"), row("a1"));
  assert.equal(row("b1"), row("b2"));
});
