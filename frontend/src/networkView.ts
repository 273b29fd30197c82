/**
 * Network level: the datapath river (paper Sec. 5.2) on top, the Eq. 9 diff chart under
 * it, and the model DAG (groups collapsible) below, all sharing one horizontal pan and
 * zoom. The river and the chart are drawn in screen units, so the band keeps its height
 * (a share of the view) at any zoom and Fit always shows every gated layer; the graph is
 * drawn in content units and can also be panned vertically.
 */

import { layoutDag, type Layout } from "./dagLayout";
import { drawDiffChart, verdict, type Verdict } from "./diffChart";
import { afterNextFrame, clear, el, svgEl, svgTitle } from "./dom";
import { groupChain, layerToOpen, visibleGraph, type VisibleNode } from "./graphModel";
import { datapathLabel } from "./labels";
import { IDENTITY, panBy, zoomAt, type Transform } from "./panZoom";
import { layerAnchors, smoothPath, type Box, type Point } from "./riverGeometry";
import { formatValue } from "./scales";
import type { DivergingMerging, GraphData, RiverData } from "./types";

export interface NetworkInput {
  graph: GraphData;
  /** Gated-layer names of the manifest, in order (index = `gated_layer`). */
  layerNames: string[];
  /** Display name of each gated layer and group id (full path when absent). */
  shortNames: Map<string, string>;
  river: RiverData;
  /** The logged Eq. 10 detection (on the L2 curve), or null. */
  detection: DivergingMerging | null;
  /** Colour of each datapath by example index. */
  colors: Map<number, string>;
  expanded: ReadonlySet<string>;
  selectedLayer: string | null;
  /** Title of exports. */
  title: string;
  onToggleGroup: (group: string) => void;
  onOpenLayer: (layerIndex: number) => void;
  /** Called after every pan or zoom by the user (not by render). */
  onViewChange: (t: Transform) => void;
}

const OP_WIDTH = 64;
const OP_HEIGHT = 24;
const GROUP_HEIGHT = 34;
const GROUP_MIN_WIDTH = 96;
const GATED_PITCH = 26;
/** Height range of the whole view (it fits the graph at Fit); the river band takes BAND_SHARE of it. */
const MIN_HEIGHT = 520;
const MAX_HEIGHT = 720;
export const BAND_SHARE = 0.3;
const BAND_TOP = 34;
const AXIS_HEIGHT = 44;
const CHART_HEIGHT = 96;
const VERDICT_HEIGHT = 22;
const SIDE = 24;
/** Content units above the graph's first row taken by nested group headers. */
const GROUP_HEADROOM = 56;
const K_MAX = 4;
const MINIMAP_WIDTH = 240;

/** Vertical zones of the view (screen pixels). */
export function zones(height: number) {
  const band = Math.round(height * BAND_SHARE);
  const axis = BAND_TOP + band + 6;
  const chart = axis + AXIS_HEIGHT;
  const verdictY = chart + CHART_HEIGHT + 15;
  const graph = chart + CHART_HEIGHT + VERDICT_HEIGHT + 6;
  return { bandTop: BAND_TOP, band, axis, chart, verdictY, graph };
}

function truncate(text: string, max: number): string {
  return text.length > max ? text.slice(0, Math.max(1, max - 1)) + "…" : text;
}

function nodeSize(node: VisibleNode): { width: number; height: number } {
  if (node.kind === "group") return { width: Math.max(GROUP_MIN_WIDTH, GATED_PITCH * node.gatedLayers.length), height: GROUP_HEIGHT };
  return { width: OP_WIDTH, height: OP_HEIGHT };
}

function pairLabel(key: string, names: Map<number, string>): string {
  return key.split(",").map((i) => names.get(Number(i)) ?? `#${i}`).join(" – ");
}

/** Stroke width of the k-th drawn of n paths: earlier (lower) paths are wider, so coinciding curves show as nested stripes. */
export function strokeWidth(k: number, n: number): number {
  return Math.round((2.5 + 2.5 * (n - 1 - k)) * 10) / 10;
}

/** Draw order: targets and sources under the adversarial datapaths (drawn last, thinnest, on top). */
function drawOrder(river: RiverData): RiverData["paths"] {
  const rank = (role: string) => (role === "target" ? 0 : role === "source" ? 1 : 2);
  return [...river.paths].sort((a, b) => rank(a.role) - rank(b.role) || a.example - b.example);
}

export class NetworkView {
  readonly element: HTMLDivElement;
  private readonly svg: SVGSVGElement;
  private readonly viewport: SVGGElement;
  private readonly screen: SVGGElement;
  private readonly minimap: SVGSVGElement;
  private readonly minimapView: SVGRectElement;
  private readonly tooltip: HTMLDivElement;
  private transform: Transform = IDENTITY;
  private layout: Layout | null = null;
  private input: NetworkInput | null = null;
  /** Content x of each river layer (null: not shown by the visible graph). */
  private anchors: Array<Point | null> = [];
  private draggedSincePointerDown = false;
  private renders = 0;
  /** The width the river and chart were last drawn for. */
  private drawnWidth = 0;
  /** Pixel height of the view (set per render). */
  private height = MIN_HEIGHT;

  constructor() {
    this.viewport = svgEl("g", { class: "viewport" });
    this.screen = svgEl("g", { class: "screen" });
    this.svg = svgEl("svg", { class: "network-svg", width: "100%", height: MIN_HEIGHT, role: "img", "aria-label": "datapath river, diff chart and model graph" }, [
      svgEl("defs", {}, [
        svgEl("marker", { id: "aevis-arrow", viewBox: "0 0 10 10", refX: 10, refY: 5, markerWidth: 6, markerHeight: 6, orient: "auto-start-reverse" }, [
          svgEl("path", { d: "M0,0 L10,5 L0,10 z", fill: "#9e9e9e" }),
        ]),
        svgEl("clipPath", { id: "aevis-graph-clip" }, [svgEl("rect", { class: "graph-clip", x: 0, y: zones(MIN_HEIGHT).graph, width: 10000, height: 10000 })]),
      ]),
      svgEl("rect", { class: "background", x: 0, y: 0, width: "100%", height: "100%", fill: "#ffffff" }),
      svgEl("g", { "clip-path": "url(#aevis-graph-clip)" }, [this.viewport]),
      this.screen,
    ]);
    this.minimapView = svgEl("rect", { class: "minimap-view", fill: "rgba(255,152,0,0.12)", stroke: "#ef6c00", "stroke-width": 1, "vector-effect": "non-scaling-stroke" });
    this.minimap = svgEl("svg", { class: "minimap", width: MINIMAP_WIDTH, height: 60, "aria-label": "mini-map of the model graph: click to move the view" });
    this.tooltip = el("div", { class: "tooltip", role: "tooltip" });
    this.tooltip.hidden = true;
    this.element = el("div", { class: "network" }, [this.svg, this.minimap, this.tooltip]);
    this.installPanZoom();
  }

  /**
   * Draw the graph, the river and the chart; `view`: keep this transform (a restored or
   * current view), else fit everything. `keepLayer`: keep that river layer at the same
   * screen x as before (expanding a group keeps the view where it is).
   */
  render(input: NetworkInput, view: Transform | null = null, keepLayer: number | null = null): number {
    const width = this.svg.getBoundingClientRect().width || 800;
    const oldScreenX = keepLayer !== null && this.anchors[keepLayer] ? this.anchors[keepLayer]![0] * this.transform.k + this.transform.x : null;
    this.tooltip.hidden = true;
    this.input = input;
    clear(this.viewport);
    const visible = visibleGraph(input.graph, input.expanded);
    const sizes = new Map(visible.nodes.map((n) => [n.id, nodeSize(n)]));
    const layout = layoutDag(visible.nodes.map((n) => ({ id: n.id, ...sizes.get(n.id)! })), visible.edges, { rankGap: 36, rowGap: 28 });
    this.layout = layout;
    const groupsLayer = svgEl("g", { class: "expanded-groups" });
    const edgesLayer = svgEl("g", { class: "edges" });
    const nodesLayer = svgEl("g", { class: "nodes" });
    this.viewport.append(groupsLayer, edgesLayer, nodesLayer);
    this.drawExpandedGroups(groupsLayer, input, visible.nodes, layout);
    for (const edge of layout.edges) {
      edgesLayer.appendChild(svgEl("path", {
        class: "graph-edge", "data-source": edge.source, "data-target": edge.target,
        d: smoothPath(edge.points), fill: "none", stroke: "#bdbdbd", "stroke-width": 1.2, "marker-end": "url(#aevis-arrow)",
      }));
    }
    const selectedIndex = input.selectedLayer === null ? -1 : input.layerNames.indexOf(input.selectedLayer);
    for (const node of visible.nodes) nodesLayer.appendChild(this.drawNode(node, layout, input, selectedIndex));
    const manifestIndex = input.river.layers.map((name) => input.layerNames.indexOf(name));
    const boxes = new Map<string, Box>();
    for (const [id, p] of layout.nodes) boxes.set(id, { x: p.x, y: p.y, width: p.width * 0.8, height: p.height });
    this.anchors = layerAnchors(input.river.layers.length, (i) => {
      const anchor = visible.gatedAnchor.get(manifestIndex[i]);
      return anchor === undefined ? undefined : boxes.get(anchor);
    });
    // The view is tall enough for the fitted graph under the river and the chart.
    const fitK = this.fitTransform(width).k;
    const needed = (zones(MIN_HEIGHT).graph - MIN_HEIGHT * BAND_SHARE + (layout.height + GROUP_HEADROOM) * fitK + 40) / (1 - BAND_SHARE);
    this.height = Math.round(Math.max(MIN_HEIGHT, Math.min(MAX_HEIGHT, needed)));
    this.svg.setAttribute("height", String(this.height));
    this.svg.querySelector(".graph-clip")!.setAttribute("y", String(zones(this.height).graph));
    if (view) this.transform = view;
    else if (oldScreenX !== null && keepLayer !== null && this.anchors[keepLayer]) {
      this.transform = { ...this.transform, x: oldScreenX - this.anchors[keepLayer]![0] * this.transform.k };
    } else this.transform = this.fitTransform(width);
    // The width measured above: measuring again after drawing would force a layout of the whole drawing.
    this.setTransform(this.transform, width);
    const drawn = ++this.renders;
    // The mini-map after the frame that paints the river, and after the tasks that frame queued.
    afterNextFrame(() => setTimeout(() => {
      if (drawn === this.renders) this.updateMinimap(nodesLayer);
    }, 0));
    return input.river.paths.length;
  }

  /** Transform showing every gated layer (and the whole graph width) across the view. */
  private fitTransform(width: number): Transform {
    if (!this.layout) return IDENTITY;
    // Every gated layer across the view: the river's ends meet the view's sides.
    const xs = this.anchors.filter((a): a is Point => a !== null).map((a) => a[0]);
    const x0 = xs.length ? Math.min(...xs) : 0;
    const x1 = xs.length ? Math.max(...xs) : this.layout.width;
    const side = SIDE + 30;
    const k = Math.min(1, (width - 2 * side) / Math.max(1, x1 - x0));
    const z = zones(this.height);
    // Room above the graph's first row for the headers of expanded groups (drawn above their nodes).
    return { k, x: side + ((width - 2 * side) - (x1 - x0) * k) / 2 - x0 * k, y: z.graph + 8 + GROUP_HEADROOM * k };
  }

  fit(): void {
    this.setTransform(this.fitTransform(this.viewSize()[0]));
    this.input?.onViewChange(this.transform);
  }

  zoomBy(factor: number): void {
    const [w] = this.viewSize();
    this.setTransform(zoomAt(this.transform, factor, w / 2, zones(this.height).graph, this.kMin(), K_MAX));
    this.input?.onViewChange(this.transform);
  }

  /** The current pan and zoom. */
  view(): Transform {
    return { ...this.transform };
  }

  private kMin(): number {
    return Math.min(0.02, this.fitTransform(this.viewSize()[0]).k / 2);
  }

  private drawExpandedGroups(layer: SVGGElement, input: NetworkInput, nodes: VisibleNode[], layout: Layout): void {
    const nodeGroup = new Map(input.graph.nodes.map((n) => [n.id, n.group]));
    const members = new Map<string, string[]>();
    for (const node of nodes) {
      const chain = groupChain(input.graph, node.kind === "group" ? node.id : nodeGroup.get(node.id) ?? null);
      for (const g of chain) if (g !== node.id && input.expanded.has(g)) {
        if (!members.has(g)) members.set(g, []);
        members.get(g)!.push(node.id);
      }
    }
    const depth = (g: string) => groupChain(input.graph, g).length;
    const ordered = [...members.keys()].sort((a, b) => depth(a) - depth(b));
    const inner = new Map<string, number>(ordered.map((g) => [g, 0]));
    for (const g of ordered) {
      for (const ancestor of groupChain(input.graph, g)) {
        if (ancestor !== g && inner.has(ancestor)) inner.set(ancestor, Math.max(inner.get(ancestor)!, depth(g) - depth(ancestor)));
      }
    }
    for (const group of ordered) {
      const placed = members.get(group)!.map((id) => layout.nodes.get(id)!);
      const levels = inner.get(group)!;
      const pad = 8 + 6 * levels;
      const x0 = Math.min(...placed.map((p) => p.x - p.width / 2)) - pad;
      const x1 = Math.max(...placed.map((p) => p.x + p.width / 2)) + pad;
      const y0 = Math.min(...placed.map((p) => p.y - p.height / 2)) - 20 - 16 * levels;
      const y1 = Math.max(...placed.map((p) => p.y + p.height / 2)) + pad;
      const box = svgEl("g", { class: "expanded-group", "data-group": group }, [
        svgEl("rect", { x: x0, y: y0, width: x1 - x0, height: y1 - y0, rx: 8, fill: "rgba(63,81,181,0.04)", stroke: "#9fa8da", "stroke-dasharray": "4 3" }),
        svgEl("text", { class: "group-label", x: x0 + 20, y: y0 + 12, "font-size": 11, fill: "#3949ab", "font-family": "Roboto, sans-serif" }, [input.shortNames.get(group) ?? group, svgTitle(group)]),
        svgEl("g", { class: "toggle", "data-group": group, cursor: "pointer" }, [
          svgEl("rect", { x: x0 + 4, y: y0 + 3, width: 12, height: 12, rx: 2, fill: "#ffffff", stroke: "#3949ab" }),
          svgEl("text", { x: x0 + 10, y: y0 + 13, "text-anchor": "middle", "font-size": 12, fill: "#3949ab" }, ["−"]),
          svgTitle(`collapse ${group}`),
        ]),
      ]);
      box.querySelector(".toggle")!.addEventListener("click", (ev) => {
        ev.stopPropagation();
        if (!this.draggedSincePointerDown) input.onToggleGroup(group);
      });
      layer.appendChild(box);
    }
  }

  private drawNode(node: VisibleNode, layout: Layout, input: NetworkInput, selectedIndex: number): SVGGElement {
    const p = layout.nodes.get(node.id)!;
    const x = p.x - p.width / 2;
    const y = p.y - p.height / 2;
    const gated = node.gatedLayers.length > 0;
    const selected = selectedIndex >= 0 && node.gatedLayers.includes(selectedIndex);
    const opened = layerToOpen(node);
    const g = svgEl("g", {
      class: `graph-node ${node.kind}${gated ? " gated" : ""}${selected ? " selected" : ""}`,
      "data-id": node.id,
      cursor: opened === null ? "default" : "pointer",
    });
    const stroke = selected ? "#d84315" : node.kind === "group" ? "#5c6bc0" : gated ? "#546e7a" : "#cfd8dc";
    g.appendChild(svgEl("rect", {
      x, y, width: p.width, height: p.height, rx: node.kind === "group" ? 8 : 3,
      fill: node.kind === "group" ? "#e8eaf6" : "#ffffff", stroke, "stroke-width": selected ? 2.5 : gated ? 1.5 : 1,
    }));
    const title = node.kind === "group"
      ? `${node.id}: ${node.size} operations, ${node.gatedLayers.length} gated layers (click to open the treemap of its last layer; ± expands)`
      : `${node.id}${gated ? ` (gated layer ${input.layerNames[node.gatedLayers[0]] ?? node.gatedLayers[0]})` : ""}`;
    g.appendChild(svgTitle(title));
    const labelX = node.kind === "group" ? x + 20 + (p.width - 20) / 2 : p.x;
    const shown = node.kind === "group" ? input.shortNames.get(node.id) ?? node.id : node.label;
    g.appendChild(svgEl("text", {
      class: "node-label", x: labelX, y: p.y + 4, "text-anchor": "middle", "font-size": 11, fill: "#263238", "font-family": "Roboto, sans-serif", "pointer-events": "none",
    }, [truncate(shown, node.kind === "group" ? Math.floor((p.width - 24) / 6.2) : 10)]));
    if (node.kind === "group") {
      const toggle = svgEl("g", { class: "toggle", "data-group": node.id, cursor: "pointer" }, [
        svgEl("rect", { x: x + 5, y: p.y - 6, width: 12, height: 12, rx: 2, fill: "#ffffff", stroke: "#3949ab" }),
        svgEl("text", { x: x + 11, y: p.y + 4, "text-anchor": "middle", "font-size": 12, fill: "#3949ab" }, ["+"]),
        svgTitle(`expand ${node.id}`),
      ]);
      toggle.addEventListener("click", (ev) => {
        ev.stopPropagation();
        if (!this.draggedSincePointerDown) input.onToggleGroup(node.id);
      });
      g.appendChild(toggle);
    }
    if (opened !== null) {
      g.addEventListener("click", () => {
        if (!this.draggedSincePointerDown) input.onOpenLayer(opened);
      });
    }
    return g;
  }

  /** Screen x of every river layer under transform `t`. */
  private screenXs(t: Transform): Array<number | null> {
    return this.anchors.map((a) => (a === null ? null : a[0] * t.k + t.x));
  }

  /**
   * The river, its story span, the layer axis and the diff chart, in screen units, into
   * `target`, for transform `t` and a view `width` pixels wide.
   */
  private drawScreen(target: SVGGElement, t: Transform, width: number, interactive: boolean): void {
    const input = this.input!;
    const river = input.river;
    const z = zones(this.height);
    const xs = this.screenXs(t);
    const name = (l: number) => input.shortNames.get(river.layers[l]) ?? river.layers[l];
    const band = svgEl("g", { class: "river" });
    const spanLayer = svgEl("g", { class: "story" });
    const axis = svgEl("g", { class: "axis" });
    const markers = svgEl("g", { class: "markers" });
    const chart = svgEl("g", { class: "diff-chart" });
    const hits = svgEl("g", { class: "hits" });
    target.append(spanLayer, band, axis, markers, chart, hits);
    const dm = input.detection;
    const merging = river.markers.find((m) => m.kind === "merging")?.layer ?? null;
    const diverging = river.markers.find((m) => m.kind === "diverging")?.layer ?? null;
    this.drawSpan(spanLayer, xs, diverging, merging, dm, z, name, width);
    const selected = input.selectedLayer === null ? -1 : river.layers.indexOf(input.selectedLayer);
    if (selected >= 0 && xs[selected] !== null) {
      band.appendChild(svgEl("line", { class: "selected-layer", x1: xs[selected]!, x2: xs[selected]!, y1: z.bandTop - 4, y2: z.chart + CHART_HEIGHT, stroke: "#d84315", "stroke-width": 1.5 }, [
        svgTitle(`${river.layers[selected]}: its feature maps are open below`),
      ]));
    }
    const ordered = drawOrder(river);
    ordered.forEach((path, k) => {
      const points: Point[] = [];
      xs.forEach((x, l) => {
        if (x !== null && Number.isFinite(path.y[l])) points.push([x, z.bandTop + path.y[l] * z.band]);
      });
      band.appendChild(svgEl("path", {
        class: "river-path", "data-example": path.example, "data-role": path.role, d: smoothPath(points), fill: "none",
        stroke: input.colors.get(path.example) ?? "#757575", "stroke-width": strokeWidth(k, ordered.length),
        "stroke-linecap": "round", "stroke-linejoin": "round", "stroke-opacity": 0.95,
      }, [svgTitle(datapathLabel(path.name, path.role))]));
    });
    this.drawAxis(axis, xs, z, name, [diverging, merging, selected]);
    for (const marker of river.markers) {
      const x = xs[marker.layer];
      if (x === null || x === undefined) continue;
      const color = marker.kind === "diverging" ? "#c62828" : "#2e7d32";
      const confirmed = marker.detected !== false;
      const top = z.axis + 2;
      markers.appendChild(svgEl("g", { class: `marker ${marker.kind}`, "data-layer": marker.layer, opacity: confirmed ? 1 : 0.6 }, [
        svgEl("line", { x1: x, x2: x, y1: z.bandTop, y2: z.bandTop + z.band, stroke: color, "stroke-width": 1.2, "stroke-dasharray": "3 3" }),
        svgEl("path", { d: `M${x - 6},${top + 9} L${x + 6},${top + 9} L${x},${top} z`, fill: color }),
        svgTitle(`${marker.kind} layer ${river.layers[marker.layer]}${confirmed ? "" : " (best candidate: Eq. 10 did not confirm the pattern)"}`),
      ]));
    }
    const diff = river.diff_curve;
    if (diff && diff.length === river.layers.length) {
      const r = dm?.r ?? Math.min(8, diff.length - 1);
      const unit = river.normalization === "rms" ? "RMS gate distance (L2 / √C_l)" : "L2 gate distance";
      const drawnXs = xs.map((x) => (x === null ? null : x));
      drawDiffChart(chart, diff, r, { xs: drawnXs, top: z.chart, height: CHART_HEIGHT, left: 0, right: width }, unit);
      const said = this.verdict();
      if (said) {
        chart.appendChild(svgEl("text", { class: `verdict ${said.detected ? "detected" : "not-detected"}`, x: 8, y: z.verdictY, "font-size": 12, "font-weight": 500, fill: said.detected ? "#2e7d32" : "#6d4c00" }, [said.text]));
      }
    }
    if (interactive) this.drawHits(hits, xs, z);
  }

  /** Eq. 10's verdict on the logged detection, or null without one. */
  verdict(): Verdict | null {
    const input = this.input;
    const dm = input?.detection;
    if (!input || !dm || !dm.diff || dm.diff.length < 2) return null;
    const name = (l: number) => input.shortNames.get(input.layerNames[l]) ?? input.layerNames[l] ?? String(l);
    return verdict(dm.diff, dm.r, dm.detected, dm.diverging_layer, dm.merging_layer, name);
  }

  private drawSpan(layer: SVGGElement, xs: Array<number | null>, diverging: number | null, merging: number | null,
    dm: DivergingMerging | null, z: ReturnType<typeof zones>, name: (l: number) => string, width: number): void {
    if (merging === null || xs[merging] === null) return;
    const input = this.input!;
    const x1 = xs[merging]!;
    const x0 = diverging !== null && xs[diverging] !== null ? xs[diverging]! : x1;
    const confirmed = dm?.detected ?? false;
    const names = new Map(input.river.paths.map((p) => [p.example, p.name]));
    const adv = dm ? names.get(dm.adversarial) : undefined;
    const src = dm ? names.get(dm.source) : undefined;
    const tgt = dm ? names.get(dm.target) : undefined;
    const who = adv && src && tgt ? `${adv} leaves ${src}${diverging !== null ? ` after ${name(diverging)}` : ""} and joins ${tgt} at ${name(merging)}`
      : `${diverging !== null ? `diverging at ${name(diverging)}, ` : ""}merging at ${name(merging)}`;
    const text = confirmed ? `Diverging → merging: ${who}` : `Best candidate span (Eq. 10 did not confirm a pattern): ${who}`;
    layer.appendChild(svgEl("rect", {
      class: `story-span${confirmed ? " detected" : " candidate"}`, x: x0 - 10, y: z.bandTop - 8, width: Math.max(20, x1 - x0 + 20), height: z.band + 16,
      fill: confirmed ? "rgba(255,193,7,0.22)" : "rgba(255,193,7,0.12)", stroke: "#ffa000", "stroke-dasharray": confirmed ? "" : "5 4", rx: 6,
    }, [svgTitle(text)]));
    const textWidth = text.length * 6.6;
    const mid = Math.max(textWidth / 2 + 8, Math.min(width - textWidth / 2 - 8, (x0 + x1) / 2));
    layer.appendChild(svgEl("text", { class: "story-label", x: mid, y: z.bandTop - 14, "text-anchor": "middle", "font-size": 13, "font-weight": 500, fill: "#8d5b00" }, [text]));
  }

  /** Layer ticks, and the short names that fit (marked layers first). */
  private drawAxis(layer: SVGGElement, xs: Array<number | null>, z: ReturnType<typeof zones>, name: (l: number) => string, first: Array<number | null>): void {
    const river = this.input!.river;
    const placed: Array<[number, number]> = [];
    const order = [...first.filter((l): l is number => l !== null && l >= 0), ...river.layers.map((_, l) => l)];
    const done = new Set<number>();
    xs.forEach((x, l) => {
      if (x === null) return;
      layer.appendChild(svgEl("line", { class: "layer-tick", "data-layer": river.layers[l], x1: x, x2: x, y1: z.bandTop + z.band, y2: z.axis + 2, stroke: "#bdbdbd" }));
    });
    for (const l of order) {
      if (done.has(l) || xs[l] === null) continue;
      done.add(l);
      const label = name(l);
      const w = label.length * 6 + 8;
      const x = xs[l]!;
      if (placed.some(([a, b]) => x - w / 2 < b && x + w / 2 > a)) continue;
      placed.push([x - w / 2, x + w / 2]);
      layer.appendChild(svgEl("text", { class: "layer-label", "data-layer": river.layers[l], x, y: z.axis + 24, "text-anchor": "middle", "font-size": 10.5, fill: "#37474f" }, [
        label, svgTitle(river.layers[l]),
      ]));
    }
  }

  private drawHits(layer: SVGGElement, xs: Array<number | null>, z: ReturnType<typeof zones>): void {
    const input = this.input!;
    const river = input.river;
    const manifestIndex = river.layers.map((n) => input.layerNames.indexOf(n));
    const names = new Map(river.paths.map((p) => [p.example, p.name]));
    const shown = xs.map((x, i) => ({ x, i })).filter((e): e is { x: number; i: number } => e.x !== null).sort((a, b) => a.x - b.x);
    shown.forEach(({ x, i }, k) => {
      const left = k > 0 ? (shown[k - 1].x + x) / 2 : x - 12;
      const right = k + 1 < shown.length ? (shown[k + 1].x + x) / 2 : x + 12;
      const hit = svgEl("rect", {
        class: "layer-hit", "data-layer": river.layers[i], x: Math.max(left, x - 30), y: z.bandTop - 8,
        width: Math.max(4, Math.min(right, x + 30) - Math.max(left, x - 30)), height: z.chart + CHART_HEIGHT - z.bandTop + 8, fill: "transparent", cursor: "pointer",
      });
      hit.addEventListener("mousemove", (ev) => this.showTooltip(ev, i, names));
      hit.addEventListener("mouseleave", () => (this.tooltip.hidden = true));
      hit.addEventListener("click", () => {
        if (!this.draggedSincePointerDown && manifestIndex[i] >= 0) input.onOpenLayer(manifestIndex[i]);
      });
      layer.appendChild(hit);
    });
  }

  private showTooltip(ev: MouseEvent, layer: number, names: Map<number, string>): void {
    const river = this.input!.river;
    clear(this.tooltip);
    const short = this.input!.shortNames.get(river.layers[layer]);
    this.tooltip.appendChild(el("div", { class: "tooltip-title" }, [`${short ?? river.layers[layer]} (layer ${layer + 1} of ${river.layers.length})`]));
    if (short && short !== river.layers[layer]) this.tooltip.appendChild(el("div", { class: "tooltip-hint" }, [river.layers[layer]]));
    const unit = river.normalization === "rms" ? "RMS distance" : "L2 distance";
    const rows = Object.entries(river.distances).map(([key, values]) =>
      el("tr", {}, [el("td", {}, [pairLabel(key, names)]), el("td", { class: "num" }, [formatValue(values[layer])])]),
    );
    this.tooltip.appendChild(el("table", {}, [el("tr", {}, [el("th", {}, ["datapaths"]), el("th", {}, [unit])]), ...rows]));
    if (river.diff_curve) this.tooltip.appendChild(el("div", {}, [`diff (Eq. 9): ${formatValue(river.diff_curve[layer])}`]));
    const marker = river.markers.find((m) => m.layer === layer);
    if (marker) this.tooltip.appendChild(el("div", { class: `tooltip-marker ${marker.kind}` }, [`${marker.kind} layer`]));
    this.tooltip.appendChild(el("div", { class: "tooltip-hint" }, ["click: feature maps of this layer"]));
    const box = this.element.getBoundingClientRect();
    this.tooltip.style.left = `${Math.min(ev.clientX - box.left + 14, box.width - 260)}px`;
    this.tooltip.style.top = `${ev.clientY - box.top + 14}px`;
    this.tooltip.hidden = false;
  }

  // ------------------------------------------------------------- pan & zoom
  private viewSize(): [number, number] {
    const r = this.svg.getBoundingClientRect();
    return [r.width || 800, r.height || this.height];
  }

  /** Show the view `t`; `width`: the view's width when just measured. */
  private setTransform(t: Transform, width = this.viewSize()[0]): void {
    this.transform = t;
    this.viewport.setAttribute("transform", `translate(${t.x},${t.y}) scale(${t.k})`);
    this.tooltip.hidden = true;
    this.placeMinimapView(t, width);
    this.drawnWidth = width;
    if (!this.input) return;
    clear(this.screen);
    this.drawScreen(this.screen, t, width, true);
  }

  /** The mini-map's rectangle of the view `t` (`width` wide), and the mini-map shown only when it helps. */
  private placeMinimapView(t: Transform, width: number): void {
    const z = zones(this.height);
    this.minimapView.setAttribute("x", String(-t.x / t.k));
    this.minimapView.setAttribute("y", String((z.graph - t.y) / t.k));
    this.minimapView.setAttribute("width", String(width / t.k));
    this.minimapView.setAttribute("height", String(Math.max(1, this.height - z.graph) / t.k));
    // The mini-map helps only when the graph is wider than the view.
    if (this.layout) this.minimap.style.display = this.layout.width * t.k < width * 1.05 ? "none" : "";
  }

  private userTransform(t: Transform): void {
    this.setTransform(t);
    this.input?.onViewChange(t);
  }

  private installPanZoom(): void {
    this.svg.addEventListener("wheel", (ev) => {
      ev.preventDefault();
      const r = this.svg.getBoundingClientRect();
      this.userTransform(zoomAt(this.transform, Math.exp(-ev.deltaY * 0.0015), ev.clientX - r.left, ev.clientY - r.top, this.kMin(), K_MAX));
    }, { passive: false });
    let last: [number, number] | null = null;
    let travelled = 0;
    this.svg.addEventListener("pointerdown", (ev) => {
      last = [ev.clientX, ev.clientY];
      travelled = 0;
      this.draggedSincePointerDown = false;
    });
    window.addEventListener("pointermove", (ev) => {
      if (!last) return;
      const dx = ev.clientX - last[0];
      const dy = ev.clientY - last[1];
      travelled += Math.abs(dx) + Math.abs(dy);
      last = [ev.clientX, ev.clientY];
      if (travelled > 4) {
        this.draggedSincePointerDown = true;
        this.userTransform(panBy(this.transform, dx, dy));
      }
    });
    window.addEventListener("pointerup", () => (last = null));
    const moveTo = (ev: MouseEvent) => {
      if (!this.layout) return;
      const r = this.minimap.getBoundingClientRect();
      const vb = this.minimap.viewBox.baseVal;
      const cx = vb.x + ((ev.clientX - r.left) / r.width) * vb.width;
      const cy = vb.y + ((ev.clientY - r.top) / r.height) * vb.height;
      const [w, h] = this.viewSize();
      const z = zones(this.height);
      const t = this.transform;
      this.userTransform({ k: t.k, x: w / 2 - cx * t.k, y: (z.graph + h) / 2 - cy * t.k });
    };
    let minimapDrag = false;
    this.minimap.addEventListener("pointerdown", (ev) => {
      ev.stopPropagation();
      minimapDrag = true;
      moveTo(ev);
    });
    window.addEventListener("pointermove", (ev) => minimapDrag && moveTo(ev));
    window.addEventListener("pointerup", () => (minimapDrag = false));
  }

  private updateMinimap(nodesLayer: SVGGElement): void {
    const [width] = this.viewSize(); // measured before the mini-map changes: no forced layout
    clear(this.minimap);
    if (!this.layout) return;
    const pad = 24;
    const vbW = this.layout.width + 2 * pad;
    const vbH = this.layout.height + 2 * pad;
    this.minimap.setAttribute("viewBox", `${-pad} ${-pad} ${vbW} ${vbH}`);
    this.minimap.setAttribute("height", String(Math.max(30, Math.min(100, (MINIMAP_WIDTH * vbH) / vbW))));
    this.minimap.setAttribute("preserveAspectRatio", "none");
    const nodes = nodesLayer.cloneNode(true) as SVGGElement;
    nodes.querySelectorAll("text, title, .toggle").forEach((n) => n.remove());
    for (const node of [nodes, ...nodes.querySelectorAll("*")]) {
      for (const name of node.getAttributeNames()) if (name === "class" || name.startsWith("data-")) node.removeAttribute(name);
    }
    this.minimap.append(svgEl("rect", { x: -pad, y: -pad, width: vbW, height: vbH, fill: "#fafafa" }), nodes, this.minimapView);
    // The view drawn at another width (a scroll bar came or went since): draw it again.
    if (width !== this.drawnWidth) this.setTransform(this.transform, width);
    else this.placeMinimapView(this.transform, width);
  }

  /**
   * The whole river (every layer, fitted to `width` pixels whatever the current view),
   * the chart and the graph, with a title and a legend, as a standalone SVG element.
   */
  snapshot(width = Math.max(1200, this.viewSize()[0])): SVGSVGElement | null {
    const input = this.input;
    if (!input || !this.layout) return null;
    const head = 26 + 20 * Math.ceil((input.river.paths.length + 3) / 4);
    const t = this.fitTransform(width);
    const z = zones(this.height);
    const height = z.graph + this.layout.height * t.k + 40;
    const out = svgEl("svg", { width, height: Math.round(height + head), viewBox: `0 0 ${width} ${Math.round(height + head)}`, "font-family": "Roboto, Helvetica, Arial, sans-serif" });
    out.appendChild(svgEl("rect", { x: 0, y: 0, width, height: height + head, fill: "#ffffff" }));
    out.appendChild(svgEl("text", { class: "export-title", x: 12, y: 20, "font-size": 15, "font-weight": 500, fill: "#212121", "font-family": "Roboto, sans-serif" }, [input.title]));
    const legend = svgEl("g", { class: "export-legend", "font-family": "Roboto, sans-serif", "font-size": 12 });
    const items: Array<[string, string, string]> = input.river.paths.map((p) => ["line", input.colors.get(p.example) ?? "#757575", datapathLabel(p.name, p.role)]);
    items.push(["span", "rgba(255,193,7,0.4)", "diverging → merging span"], ["tri-d", "#c62828", "diverging layer"], ["tri-m", "#2e7d32", "merging layer"]);
    items.forEach(([kind, color, text], k) => {
      const x = 12 + (k % 4) * ((width - 24) / 4);
      const y = 40 + Math.floor(k / 4) * 20;
      legend.appendChild(kind === "line" ? svgEl("line", { x1: x, x2: x + 24, y1: y - 4, y2: y - 4, stroke: color, "stroke-width": 4 })
        : kind === "span" ? svgEl("rect", { x, y: y - 10, width: 24, height: 12, fill: color })
          : svgEl("path", { d: `M${x + 6},${y} L${x + 18},${y} L${x + 12},${y - 10} z`, fill: color }));
      legend.appendChild(svgEl("text", { x: x + 30, y, fill: "#212121" }, [text]));
    });
    out.appendChild(legend);
    const body = svgEl("g", { transform: `translate(0,${head})` });
    const graph = this.viewport.cloneNode(true) as SVGGElement;
    graph.setAttribute("transform", `translate(${t.x},${t.y}) scale(${t.k})`);
    const screen = svgEl("g", {});
    this.drawScreen(screen, t, width, false);
    body.append(svgEl("defs", {}, [this.svg.querySelector("marker")!.cloneNode(true)]), graph, screen);
    out.appendChild(body);
    return out;
  }
}
