import { test } from "node:test";
import assert from "node:assert/strict";
import { defaultExpanded, groupChain, layerToOpen, toggleGroup, visibleGraph } from "../src/graphModel";
import type { GraphData } from "../src/types";

/** x -> conv -> [block.a -> block.b] + skip -> add -> fc, like a residual block. */
function residualGraph(): GraphData {
  const node = (id: string, group: string | null, gated: number | null = null) => ({ id, label: id.split(".").pop()!, op: "call_module", group, gated_layer: gated });
  return {
    nodes: [
      node("x", null),
      node("conv", null, 0),
      node("block.inner.a", "block.inner", 1),
      node("block.inner.b", "block.inner"),
      node("block.skip", "block"),
      node("block.add", "block", 2),
      node("fc", null),
    ],
    edges: [
      { source: "x", target: "conv" },
      { source: "conv", target: "block.inner.a" },
      { source: "block.inner.a", target: "block.inner.b" },
      { source: "conv", target: "block.skip" },
      { source: "block.inner.b", target: "block.add" },
      { source: "block.skip", target: "block.add" },
      { source: "block.add", target: "fc" },
    ],
    groups: [
      { id: "block", label: "block", parent: null, gated_layers: [1, 2] },
      { id: "block.inner", label: "inner", parent: "block", gated_layers: [1] },
    ],
  };
}

test("groupChain lists ancestors outermost first and ignores unknown groups", () => {
  const g = residualGraph();
  assert.deepEqual(groupChain(g, "block.inner"), ["block", "block.inner"]);
  assert.deepEqual(groupChain(g, null), []);
  assert.deepEqual(groupChain(g, "nope"), []);
});

test("a collapsed group replaces its nodes and their edges", () => {
  const v = visibleGraph(residualGraph(), new Set());
  assert.deepEqual(v.nodes.map((n) => n.id).sort(), ["block", "conv", "fc", "x"]);
  const block = v.nodes.find((n) => n.id === "block")!;
  assert.equal(block.kind, "group");
  assert.equal(block.size, 4);
  assert.deepEqual(block.gatedLayers, [1, 2]);
  assert.deepEqual(v.edges.map((e) => `${e.source}>${e.target}`).sort(), ["block>fc", "conv>block", "x>conv"]);
  assert.equal(v.gatedAnchor.get(1), "block");
  assert.equal(v.gatedAnchor.get(0), "conv");
});

test("fully expanded, the visible graph is the model graph", () => {
  const g = residualGraph();
  const v = visibleGraph(g, new Set(["block", "block.inner"]));
  assert.equal(v.nodes.length, g.nodes.length);
  assert.equal(v.edges.length, g.edges.length);
  assert.ok(v.nodes.every((n) => n.kind === "op" && n.size === 1));
});

test("defaultExpanded opens whole depth levels while within budget", () => {
  const g = residualGraph();
  assert.deepEqual([...defaultExpanded(g, 100)].sort(), ["block", "block.inner"]);
  // Depth 0 open gives x, conv, block.inner, block.skip, block.add, fc = 6 nodes.
  assert.deepEqual([...defaultExpanded(g, 6)], ["block"]);
  assert.deepEqual([...defaultExpanded(g, 5)], []);
});

test("toggleGroup expands ancestors and collapses descendants", () => {
  const g = residualGraph();
  assert.deepEqual([...toggleGroup(g, new Set(), "block.inner")].sort(), ["block", "block.inner"]);
  assert.deepEqual([...toggleGroup(g, new Set(["block", "block.inner"]), "block")], []);
});

test("layerToOpen picks the deepest gated layer of a node", () => {
  const v = visibleGraph(residualGraph(), new Set());
  assert.equal(layerToOpen(v.nodes.find((n) => n.id === "block")!), 2);
  assert.equal(layerToOpen(v.nodes.find((n) => n.id === "fc")!), null);
});
