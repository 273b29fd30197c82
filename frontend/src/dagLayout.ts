/**
 * Layered DAG layout, left to right (pure). Ranks by longest path from the sources,
 * long edges get dummy points so they route around the ranks they cross, the order
 * within a rank is improved by barycentre sweeps, and each node sits on the row of
 * its order so a chain of layers (and the river along it) runs straight.
 */

export interface LayoutNodeInput {
  id: string;
  width: number;
  height: number;
}

export interface LayoutEdgeInput {
  source: string;
  target: string;
}

export interface LayoutOptions {
  rankGap: number;
  rowGap: number;
  sweeps: number;
}

export interface PlacedNode {
  id: string;
  /** Centre. */
  x: number;
  y: number;
  width: number;
  height: number;
  rank: number;
  row: number;
}

export interface RoutedEdge {
  source: string;
  target: string;
  /** From the source's right side through the dummy points to the target's left side. */
  points: Array<[number, number]>;
}

export interface Layout {
  nodes: Map<string, PlacedNode>;
  edges: RoutedEdge[];
  width: number;
  height: number;
}

const DEFAULTS: LayoutOptions = { rankGap: 40, rowGap: 24, sweeps: 4 };

/** Topological order of the node ids; throws when the edges contain a cycle. */
export function topologicalOrder(ids: string[], edges: LayoutEdgeInput[]): string[] {
  const indegree = new Map(ids.map((id) => [id, 0]));
  const out = new Map<string, string[]>(ids.map((id) => [id, []]));
  for (const e of edges) {
    if (!indegree.has(e.source) || !indegree.has(e.target)) {
      throw new Error(`edge ${e.source} -> ${e.target} names an unknown node`);
    }
    out.get(e.source)!.push(e.target);
    indegree.set(e.target, indegree.get(e.target)! + 1);
  }
  const queue = ids.filter((id) => indegree.get(id) === 0);
  const order: string[] = [];
  for (let head = 0; head < queue.length; head++) {
    const id = queue[head];
    order.push(id);
    for (const t of out.get(id)!) {
      const d = indegree.get(t)! - 1;
      indegree.set(t, d);
      if (d === 0) queue.push(t);
    }
  }
  if (order.length !== ids.length) throw new Error("the model graph has a cycle; the layout needs a DAG");
  return order;
}

/** Rank of every node: length of the longest path from any source to it. */
export function longestPathRanks(ids: string[], edges: LayoutEdgeInput[]): Map<string, number> {
  const rank = new Map(ids.map((id) => [id, 0]));
  const incoming = new Map<string, string[]>(ids.map((id) => [id, []]));
  for (const e of edges) incoming.get(e.target)?.push(e.source);
  for (const id of topologicalOrder(ids, edges)) {
    for (const s of incoming.get(id)!) rank.set(id, Math.max(rank.get(id)!, rank.get(s)! + 1));
  }
  return rank;
}

/** Number of crossings between consecutive ranks for the given orders (for tests and tuning). */
export function countCrossings(orders: string[][], edges: Array<[string, string]>): number {
  const position = new Map<string, [number, number]>();
  orders.forEach((ids, r) => ids.forEach((id, i) => position.set(id, [r, i])));
  const byRank = new Map<number, Array<[number, number]>>();
  for (const [a, b] of edges) {
    const [ra, ia] = position.get(a)!;
    const [rb, ib] = position.get(b)!;
    if (rb !== ra + 1) continue;
    if (!byRank.has(ra)) byRank.set(ra, []);
    byRank.get(ra)!.push([ia, ib]);
  }
  let crossings = 0;
  for (const list of byRank.values()) {
    for (let i = 0; i < list.length; i++) {
      for (let j = i + 1; j < list.length; j++) {
        const [a1, b1] = list[i];
        const [a2, b2] = list[j];
        if ((a1 - a2) * (b1 - b2) < 0) crossings++;
      }
    }
  }
  return crossings;
}

export function layoutDag(
  nodes: LayoutNodeInput[],
  edges: LayoutEdgeInput[],
  options: Partial<LayoutOptions> = {},
): Layout {
  const opt = { ...DEFAULTS, ...options };
  const ids = nodes.map((n) => n.id);
  const ranks = longestPathRanks(ids, edges);
  const topo = topologicalOrder(ids, edges);

  // Segments between consecutive ranks, through dummy nodes for long edges.
  const segments: Array<[string, string]> = [];
  const chains: string[][] = [];
  const rankOf = new Map(ranks);
  edges.forEach((e, k) => {
    const r0 = ranks.get(e.source)!;
    const r1 = ranks.get(e.target)!;
    const chain = [e.source];
    for (let r = r0 + 1; r < r1; r++) {
      const dummy = `\u0000dummy:${k}:${r}`;
      rankOf.set(dummy, r);
      chain.push(dummy);
    }
    chain.push(e.target);
    for (let i = 0; i + 1 < chain.length; i++) segments.push([chain[i], chain[i + 1]]);
    chains.push(chain);
  });

  const maxRank = Math.max(0, ...rankOf.values());
  const orders: string[][] = Array.from({ length: maxRank + 1 }, () => []);
  for (const id of topo) orders[rankOf.get(id)!].push(id);
  chains.forEach((chain) => chain.slice(1, -1).forEach((d) => orders[rankOf.get(d)!].push(d)));

  const preds = new Map<string, string[]>();
  const succs = new Map<string, string[]>();
  for (const [a, b] of segments) {
    if (!succs.has(a)) succs.set(a, []);
    if (!preds.has(b)) preds.set(b, []);
    succs.get(a)!.push(b);
    preds.get(b)!.push(a);
  }
  const reorder = (r: number, neighbours: Map<string, string[]>, ref: string[]) => {
    const refPos = new Map(ref.map((id, i) => [id, i]));
    const current = orders[r];
    const keyed = current.map((id, i) => {
      const ns = (neighbours.get(id) ?? []).filter((n) => refPos.has(n));
      const bary = ns.length ? ns.reduce((s, n) => s + refPos.get(n)!, 0) / ns.length : i;
      return { id, bary, i };
    });
    keyed.sort((a, b) => a.bary - b.bary || a.i - b.i);
    orders[r] = keyed.map((k) => k.id);
  };
  let best = orders.map((o) => [...o]);
  let bestCrossings = countCrossings(orders, segments);
  for (let sweep = 0; sweep < opt.sweeps && bestCrossings > 0; sweep++) {
    if (sweep % 2 === 0) for (let r = 1; r <= maxRank; r++) reorder(r, preds, orders[r - 1]);
    else for (let r = maxRank - 1; r >= 0; r--) reorder(r, succs, orders[r + 1]);
    const crossings = countCrossings(orders, segments);
    if (crossings < bestCrossings) {
      bestCrossings = crossings;
      best = orders.map((o) => [...o]);
    }
  }

  // Coordinates: a column per rank, a row per order position.
  const sizes = new Map(nodes.map((n) => [n.id, n]));
  const rankWidth = Array.from({ length: maxRank + 1 }, () => 0);
  let rowHeight = 0;
  for (const n of nodes) {
    rankWidth[ranks.get(n.id)!] = Math.max(rankWidth[ranks.get(n.id)!], n.width);
    rowHeight = Math.max(rowHeight, n.height);
  }
  const rankX: number[] = [];
  let cursor = 0;
  for (let r = 0; r <= maxRank; r++) {
    const w = Math.max(rankWidth[r], 8);
    rankX.push(cursor + w / 2);
    cursor += w + opt.rankGap;
  }
  const pitch = rowHeight + opt.rowGap;
  const place = new Map<string, [number, number]>();
  let maxRow = 0;
  best.forEach((ids, r) =>
    ids.forEach((id, row) => {
      place.set(id, [rankX[r], rowHeight / 2 + row * pitch]);
      maxRow = Math.max(maxRow, row);
    }),
  );
  const placed = new Map<string, PlacedNode>();
  for (const id of topo) {
    const [x, y] = place.get(id)!;
    const n = sizes.get(id)!;
    const row = Math.round((y - rowHeight / 2) / pitch);
    placed.set(id, { id, x, y, width: n.width, height: n.height, rank: ranks.get(id)!, row });
  }
  const routed: RoutedEdge[] = chains.map((chain, k) => {
    const s = placed.get(chain[0])!;
    const t = placed.get(chain[chain.length - 1])!;
    const points: Array<[number, number]> = [[s.x + s.width / 2, s.y]];
    for (const d of chain.slice(1, -1)) points.push(place.get(d)!);
    points.push([t.x - t.width / 2, t.y]);
    return { source: edges[k].source, target: edges[k].target, points };
  });
  return {
    nodes: placed,
    edges: routed,
    width: Math.max(0, cursor - opt.rankGap),
    height: rowHeight + maxRow * pitch,
  };
}
