/**
 * The model DAG as drawn: layer groups are collapsed or expanded (like TensorBoard's
 * graph dashboard). A collapsed group stands in for every node inside it; edges
 * between hidden nodes become edges between their visible representatives.
 */

import type { GraphData } from "./types";

export interface VisibleNode {
  id: string;
  kind: "op" | "group";
  /** A module's type (Conv2d), else the op's label (add); groups: their module path. */
  label: string;
  /** Indices into the manifest's layers of the gated layers this node shows, ascending. */
  gatedLayers: number[];
  /** Number of model operations this node stands for (1 for an op). */
  size: number;
}

export interface VisibleGraph {
  nodes: VisibleNode[];
  edges: Array<{ source: string; target: string }>;
  /** For each gated layer index, the id of the visible node that shows it. */
  gatedAnchor: Map<number, string>;
}

/** Parent of each group id, per graph (computed once: groupChain is called per node). */
const parentMaps = new WeakMap<GraphData, Map<string, string | null>>();

function parentsOf(graph: GraphData): Map<string, string | null> {
  let parents = parentMaps.get(graph);
  if (!parents) {
    parents = new Map(graph.groups.map((g) => [g.id, g.parent]));
    parentMaps.set(graph, parents);
  }
  return parents;
}

/** Ids of `group` and its ancestors, outermost first. */
export function groupChain(graph: GraphData, group: string | null): string[] {
  const parents = parentsOf(graph);
  const chain: string[] = [];
  const seen = new Set<string>();
  let current = group;
  while (current !== null && current !== undefined && parents.has(current) && !seen.has(current)) {
    seen.add(current);
    chain.push(current);
    current = parents.get(current) ?? null;
  }
  return chain.reverse();
}

/** Id of the visible node for node `nodeId` whose groups (outermost first) are `chain`. */
function representative(chain: string[], nodeId: string, expanded: ReadonlySet<string>): string {
  for (const group of chain) {
    if (!expanded.has(group)) return group;
  }
  return nodeId;
}

/** The graph with every group not in `expanded` collapsed into one node. */
export function visibleGraph(graph: GraphData, expanded: ReadonlySet<string>): VisibleGraph {
  const groupsById = new Map(graph.groups.map((g) => [g.id, g]));
  const repOf = new Map<string, string>();
  const nodes = new Map<string, VisibleNode>();
  const gatedAnchor = new Map<number, string>();
  for (const node of graph.nodes) {
    const rep = representative(groupChain(graph, node.group), node.id, expanded);
    repOf.set(node.id, rep);
    let visible = nodes.get(rep);
    if (!visible) {
      const group = groupsById.get(rep);
      visible = group
        ? { id: rep, kind: "group", label: group.id, gatedLayers: [], size: 0 }
        : { id: rep, kind: "op", label: node.module_type || node.label, gatedLayers: [], size: 0 };
      nodes.set(rep, visible);
    }
    visible.size += 1;
    if (node.gated_layer !== null && node.gated_layer !== undefined) {
      visible.gatedLayers.push(node.gated_layer);
      gatedAnchor.set(node.gated_layer, rep);
    }
  }
  for (const node of nodes.values()) node.gatedLayers.sort((a, b) => a - b);
  const edgeKeys = new Set<string>();
  const edges: Array<{ source: string; target: string }> = [];
  for (const edge of graph.edges) {
    const source = repOf.get(edge.source);
    const target = repOf.get(edge.target);
    if (source === undefined || target === undefined || source === target) continue;
    const key = JSON.stringify([source, target]);
    if (edgeKeys.has(key)) continue;
    edgeKeys.add(key);
    edges.push({ source, target });
  }
  return { nodes: [...nodes.values()], edges, gatedAnchor };
}

/** Depth of each group (0 for groups without parent). */
function groupDepths(graph: GraphData): Map<string, number> {
  return new Map(graph.groups.map((g) => [g.id, groupChain(graph, g.id).length - 1]));
}

/**
 * Groups to expand on first view: whole depth levels are opened, shallowest first,
 * while the visible graph stays within `budget` nodes. Small models open fully;
 * deep ones (ResNet-101) stay collapsed to their top-level blocks.
 */
export function defaultExpanded(graph: GraphData, budget: number): Set<string> {
  const depths = groupDepths(graph);
  const maxDepth = Math.max(-1, ...depths.values());
  let expanded = new Set<string>();
  for (let depth = 0; depth <= maxDepth; depth++) {
    const next = new Set(expanded);
    for (const [id, d] of depths) if (d === depth) next.add(id);
    if (visibleGraph(graph, next).nodes.length > budget) break;
    expanded = next;
  }
  return expanded;
}

/** `expanded` with `group` toggled; collapsing a group also collapses its descendants. */
export function toggleGroup(graph: GraphData, expanded: ReadonlySet<string>, group: string): Set<string> {
  const next = new Set(expanded);
  if (!next.has(group)) {
    for (const id of groupChain(graph, group)) next.add(id);
    return next;
  }
  for (const g of graph.groups) {
    if (groupChain(graph, g.id).includes(group)) next.delete(g.id);
  }
  return next;
}

/** The gated layer a click on a visible node opens: its last (deepest) gated layer, or null. */
export function layerToOpen(node: VisibleNode): number | null {
  return node.gatedLayers.length ? node.gatedLayers[node.gatedLayers.length - 1] : null;
}
