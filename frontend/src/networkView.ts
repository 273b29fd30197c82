/**
 * Network level: the model DAG (groups collapsible), the river of the chosen datapaths
 * along its gated layers, diverging / merging markers, distance tooltips, pan and
 * zoom, and a mini-map when the graph is wider than the view.
 */

import { layoutDag, type Layout } from "./dagLayout";
import { afterNextFrame, clear, el, svgEl, svgTitle } from "./dom";
import { groupChain, layerToOpen, visibleGraph, type VisibleNode } from "./graphModel";
import { centreOn, fitTransform, IDENTITY, panBy, visibleContent, zoomAt, type Transform } from "./panZoom";
import { layerAnchors, riverPoints, smoothPath, type Box, type Point } from "./riverGeometry";
import { formatValue } from "./scales";
import type { GraphData, RiverData } from "./types";

export interface NetworkInput {
  graph: GraphData;
  /** Gated-layer names of the manifest, in order (index = `gated_layer`). */
  layerNames: string[];
  river: RiverData;
  /** Colour of each datapath by example index. */
  colors: Map<number, string>;
  expanded: ReadonlySet<string>;
  selectedLayer: string | null;
  onToggleGroup: (group: string) => void;
  onOpenLayer: (layerIndex: number) => void;
}

const OP_WIDTH = 64;
const OP_HEIGHT = 24;
const GROUP_HEIGHT = 34;
const GROUP_MIN_WIDTH = 96;
const GATED_PITCH = 26;
const BAND_WIDTH = 48;
const RIVER_STROKE = 4;
const VIEW_HEIGHT = 420;
const K_MIN = 0.02;
const K_MAX = 4;
const MINIMAP_WIDTH = 240;

function truncate(text: string, max: number): string {
  return text.length > max ? text.slice(0, max - 1) + "…" : text;
}

function nodeSize(node: VisibleNode): { width: number; height: number } {
  if (node.kind === "group") return { width: Math.max(GROUP_MIN_WIDTH, GATED_PITCH * node.gatedLayers.length), height: GROUP_HEIGHT };
  return { width: OP_WIDTH, height: OP_HEIGHT };
}

function pairLabel(key: string, names: Map<number, string>): string {
  return key
    .split(",")
    .map((i) => names.get(Number(i)) ?? `#${i}`)
    .join(" – ");
}

export class NetworkView {
  readonly element: HTMLDivElement;
  private readonly svg: SVGSVGElement;
  private readonly viewport: SVGGElement;
  private readonly minimap: SVGSVGElement;
  private readonly minimapView: SVGRectElement;
  private readonly tooltip: HTMLDivElement;
  private transform: Transform = IDENTITY;
  private layout: Layout | null = null;
  private draggedSincePointerDown = false;
  /** Number of render() calls, so a deferred mini-map update of an older drawing is skipped. */
  private renders = 0;

  constructor() {
    this.viewport = svgEl("g", { class: "viewport" });
    this.svg = svgEl("svg", { class: "network-svg", width: "100%", height: VIEW_HEIGHT, role: "img", "aria-label": "model graph with datapath river" }, [
      svgEl("defs", {}, [
        svgEl("marker", { id: "aevis-arrow", viewBox: "0 0 10 10", refX: 10, refY: 5, markerWidth: 6, markerHeight: 6, orient: "auto-start-reverse" }, [
          svgEl("path", { d: "M0,0 L10,5 L0,10 z", fill: "#9e9e9e" }),
        ]),
      ]),
      svgEl("rect", { class: "background", x: 0, y: 0, width: "100%", height: "100%", fill: "#ffffff" }),
      this.viewport,
    ]);
    this.minimapView = svgEl("rect", { class: "minimap-view", fill: "rgba(255,152,0,0.12)", stroke: "#ef6c00", "stroke-width": 1, "vector-effect": "non-scaling-stroke" });
    this.minimap = svgEl("svg", { class: "minimap", width: MINIMAP_WIDTH, height: 60, "aria-label": "mini-map: click to move the view" });
    this.tooltip = el("div", { class: "tooltip", role: "tooltip" });
    this.tooltip.hidden = true;
    this.element = el("div", { class: "network" }, [this.svg, this.minimap, this.tooltip]);
    this.installPanZoom();
  }

  /** Draw the graph and the river; returns the number of river paths drawn. */
  render(input: NetworkInput): number {
    // Measured before the new drawing exists: reading a size later would force a layout of the whole graph.
    const width = this.svg.getBoundingClientRect().width || 800;
    clear(this.viewport);
    const visible = visibleGraph(input.graph, input.expanded);
    const sizes = new Map(visible.nodes.map((n) => [n.id, nodeSize(n)]));
    const layout = layoutDag(
      visible.nodes.map((n) => ({ id: n.id, ...sizes.get(n.id)! })),
      visible.edges,
      { rankGap: 36, rowGap: BAND_WIDTH + 28 },
    );
    this.layout = layout;
    // Short graphs get a shorter view; tall ones scroll inside it.
    const height = Math.round(Math.max(240, Math.min(VIEW_HEIGHT, layout.height + 2 * BAND_WIDTH + 80)));
    this.svg.setAttribute("height", String(height));

    const groupsLayer = svgEl("g", { class: "expanded-groups" });
    const edgesLayer = svgEl("g", { class: "edges" });
    const nodesLayer = svgEl("g", { class: "nodes" });
    const riverLayer = svgEl("g", { class: "river" });
    const markersLayer = svgEl("g", { class: "markers" });
    const hitsLayer = svgEl("g", { class: "hits" });
    this.viewport.append(groupsLayer, edgesLayer, nodesLayer, riverLayer, markersLayer, hitsLayer);

    this.drawExpandedGroups(groupsLayer, input, visible.nodes, layout);
    for (const edge of layout.edges) {
      edgesLayer.appendChild(svgEl("path", {
        class: "graph-edge", "data-source": edge.source, "data-target": edge.target,
        d: smoothPath(edge.points), fill: "none", stroke: "#bdbdbd", "stroke-width": 1.2, "marker-end": "url(#aevis-arrow)",
      }));
    }
    const selectedIndex = input.selectedLayer === null ? -1 : input.layerNames.indexOf(input.selectedLayer);
    for (const node of visible.nodes) nodesLayer.appendChild(this.drawNode(node, layout, input, selectedIndex));

    // River: manifest layer index of each river layer, anchored on the visible graph.
    const manifestIndex = input.river.layers.map((name) => input.layerNames.indexOf(name));
    const boxes = new Map<string, Box>();
    // The river runs in a band just below the row of the node showing each layer.
    for (const [id, p] of layout.nodes) boxes.set(id, { x: p.x, y: p.y + p.height / 2 + 6 + BAND_WIDTH / 2, width: p.width * 0.8, height: p.height });
    const anchors = layerAnchors(input.river.layers.length, (i) => {
      const anchor = visible.gatedAnchor.get(manifestIndex[i]);
      return anchor === undefined ? undefined : boxes.get(anchor);
    });
    input.river.paths.forEach((path) => {
      const points = riverPoints(anchors, path.y, BAND_WIDTH);
      riverLayer.appendChild(
        svgEl("path", {
          class: "river-path",
          "data-example": path.example,
          "data-role": path.role,
          d: smoothPath(points),
          fill: "none",
          stroke: input.colors.get(path.example) ?? "#757575",
          "stroke-width": RIVER_STROKE,
          "stroke-linecap": "round",
          "stroke-opacity": 0.9,
        }, [svgTitle(`${path.name} (${path.role})`)]),
      );
    });
    this.drawMarkers(markersLayer, input.river, anchors);
    this.drawHits(hitsLayer, input, anchors, manifestIndex);
    this.fit([width, height]);
    // The mini-map copies the drawing: it waits until the river is on screen.
    const drawn = ++this.renders;
    afterNextFrame(() => {
      if (drawn === this.renders) this.updateMinimap(riverLayer, nodesLayer);
    });
    return input.river.paths.length;
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
    // Levels of expanded groups nested inside each one, so nested boxes and their headers do not overlap.
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
        svgEl("text", { x: x0 + 20, y: y0 + 12, "font-size": 11, fill: "#3949ab", "font-family": "Roboto, sans-serif" }, [group]),
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
    g.appendChild(svgEl("text", {
      x: labelX, y: p.y + 4, "text-anchor": "middle", "font-size": 11, fill: "#263238", "font-family": "Roboto, sans-serif", "pointer-events": "none",
    }, [truncate(node.kind === "group" ? node.id : node.label, node.kind === "group" ? Math.floor((p.width - 24) / 6.5) : 9)]));
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

  private drawMarkers(layer: SVGGElement, river: RiverData, anchors: Array<Point | null>): void {
    for (const marker of river.markers) {
      const a = anchors[marker.layer];
      if (!a) continue;
      const color = marker.kind === "diverging" ? "#c62828" : "#2e7d32";
      const confirmed = marker.detected !== false;
      const bottom = a[1] + BAND_WIDTH / 2 + 4;
      layer.appendChild(svgEl("g", { class: `marker ${marker.kind}`, "data-layer": marker.layer, opacity: confirmed ? 1 : 0.45 }, [
        svgEl("line", { x1: a[0], x2: a[0], y1: a[1] - BAND_WIDTH / 2, y2: bottom, stroke: color, "stroke-width": 1.5, "stroke-dasharray": "3 2" }),
        svgEl("path", { d: `M${a[0] - 6},${bottom + 9} L${a[0] + 6},${bottom + 9} L${a[0]},${bottom} z`, fill: color }),
        svgEl("text", { x: a[0], y: bottom + 21, "text-anchor": "middle", "font-size": 11, fill: color, "font-family": "Roboto, sans-serif" }, [confirmed ? marker.kind : `${marker.kind}?`]),
        svgTitle(`${marker.kind} point at ${river.layers[marker.layer]}${confirmed ? "" : " (candidate: the detection did not confirm the pattern)"}`),
      ]));
    }
  }

  private drawHits(layer: SVGGElement, input: NetworkInput, anchors: Array<Point | null>, manifestIndex: number[]): void {
    const names = new Map(input.river.paths.map((p) => [p.example, p.name]));
    const anchored = anchors.map((a, i) => ({ a, i })).filter((e): e is { a: Point; i: number } => e.a !== null);
    anchored.forEach(({ a, i }, k) => {
      const left = k > 0 ? (anchored[k - 1].a[0] + a[0]) / 2 : a[0] - 12;
      const right = k + 1 < anchored.length ? (anchored[k + 1].a[0] + a[0]) / 2 : a[0] + 12;
      const sameRow = (b: Point | undefined) => b !== undefined && Math.abs(b[1] - a[1]) < 1;
      const x0 = sameRow(anchored[k - 1]?.a) ? left : a[0] - 12;
      const x1 = sameRow(anchored[k + 1]?.a) ? right : a[0] + 12;
      const hit = svgEl("rect", {
        class: "layer-hit", "data-layer": input.river.layers[i], x: x0, y: a[1] - BAND_WIDTH / 2 - 4,
        width: Math.max(4, x1 - x0), height: BAND_WIDTH + 8, fill: "transparent", cursor: "pointer",
      });
      hit.addEventListener("mousemove", (ev) => this.showTooltip(ev, input.river, i, names));
      hit.addEventListener("mouseleave", () => (this.tooltip.hidden = true));
      hit.addEventListener("click", () => {
        if (!this.draggedSincePointerDown && manifestIndex[i] >= 0) input.onOpenLayer(manifestIndex[i]);
      });
      layer.appendChild(hit);
    });
  }

  private showTooltip(ev: MouseEvent, river: RiverData, layer: number, names: Map<number, string>): void {
    clear(this.tooltip);
    this.tooltip.appendChild(el("div", { class: "tooltip-title" }, [`${river.layers[layer]} (layer ${layer + 1} of ${river.layers.length})`]));
    const rows = Object.entries(river.distances).map(([key, values]) =>
      el("tr", {}, [el("td", {}, [pairLabel(key, names)]), el("td", { class: "num" }, [formatValue(values[layer])])]),
    );
    this.tooltip.appendChild(el("table", {}, [el("tr", {}, [el("th", {}, ["datapaths"]), el("th", {}, ["distance"])]), ...rows]));
    const marker = river.markers.find((m) => m.layer === layer);
    if (marker) this.tooltip.appendChild(el("div", { class: `tooltip-marker ${marker.kind}` }, [`${marker.kind} point`]));
    this.tooltip.appendChild(el("div", { class: "tooltip-hint" }, ["click: feature maps of this layer"]));
    const box = this.element.getBoundingClientRect();
    this.tooltip.style.left = `${Math.min(ev.clientX - box.left + 14, box.width - 260)}px`;
    this.tooltip.style.top = `${ev.clientY - box.top + 14}px`;
    this.tooltip.hidden = false;
  }

  // ------------------------------------------------------------- pan & zoom
  private viewSize(): [number, number] {
    const r = this.svg.getBoundingClientRect();
    return [r.width || 800, r.height || VIEW_HEIGHT];
  }

  private setTransform(t: Transform, size: [number, number] = this.viewSize()): void {
    this.transform = t;
    this.viewport.setAttribute("transform", `translate(${t.x},${t.y}) scale(${t.k})`);
    const [w, h] = size;
    const v = visibleContent(t, w, h);
    this.minimapView.setAttribute("x", String(v.x));
    this.minimapView.setAttribute("y", String(v.y));
    this.minimapView.setAttribute("width", String(v.width));
    this.minimapView.setAttribute("height", String(v.height));
  }

  /** Show the whole graph; deep models are shown at a legible zoom from the start instead. */
  fit(size: [number, number] = this.viewSize()): void {
    if (!this.layout) return;
    const [w, h] = size;
    const margin = BAND_WIDTH;
    const content = { x: -margin, y: -margin - 20, width: this.layout.width + 2 * margin, height: this.layout.height + 2 * margin + 20 };
    let t = fitTransform(content, w, h, 8, 1.5);
    if (t.k < 0.45) {
      // Too small to read: keep a readable zoom and start at the input side; the mini-map shows the rest.
      const k = Math.min(0.8, h / content.height);
      t = { k, x: -content.x * k + 8, y: (h - content.height * k) / 2 - content.y * k };
    }
    this.setTransform(t, size);
  }

  zoomBy(factor: number): void {
    const [w, h] = this.viewSize();
    this.setTransform(zoomAt(this.transform, factor, w / 2, h / 2, K_MIN, K_MAX));
  }

  private installPanZoom(): void {
    this.svg.addEventListener("wheel", (ev) => {
      ev.preventDefault();
      const r = this.svg.getBoundingClientRect();
      this.setTransform(zoomAt(this.transform, Math.exp(-ev.deltaY * 0.0015), ev.clientX - r.left, ev.clientY - r.top, K_MIN, K_MAX));
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
        this.setTransform(panBy(this.transform, dx, dy));
        this.tooltip.hidden = true;
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
      this.setTransform(centreOn(this.transform, cx, cy, w, h));
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

  private updateMinimap(riverLayer: SVGGElement, nodesLayer: SVGGElement): void {
    clear(this.minimap);
    if (!this.layout) return;
    const [w] = this.viewSize();
    const pad = BAND_WIDTH;
    const vbW = this.layout.width + 2 * pad;
    const vbH = this.layout.height + 2 * pad;
    this.minimap.style.display = this.layout.width < w * 1.2 ? "none" : "";
    this.minimap.setAttribute("viewBox", `${-pad} ${-pad} ${vbW} ${vbH}`);
    this.minimap.setAttribute("height", String(Math.max(30, Math.min(140, (MINIMAP_WIDTH * vbH) / vbW))));
    this.minimap.setAttribute("preserveAspectRatio", "none");
    const nodes = nodesLayer.cloneNode(true) as SVGGElement;
    nodes.querySelectorAll("text, title, .toggle").forEach((n) => n.remove());
    const river = riverLayer.cloneNode(true) as SVGGElement;
    river.querySelectorAll("title").forEach((n) => n.remove());
    river.querySelectorAll("path").forEach((p) => {
      p.setAttribute("vector-effect", "non-scaling-stroke");
      p.setAttribute("stroke-width", "2");
    });
    // The copies are pictures only: no classes or data attributes that select like the real view.
    for (const copy of [nodes, river]) {
      for (const node of [copy, ...copy.querySelectorAll("*")]) {
        for (const name of node.getAttributeNames()) if (name === "class" || name.startsWith("data-")) node.removeAttribute(name);
      }
    }
    this.minimap.append(svgEl("rect", { x: -pad, y: -pad, width: vbW, height: vbH, fill: "#fafafa" }), nodes, river, this.minimapView);
    this.setTransform(this.transform);
  }

  /** The view as drawn now, as a standalone SVG element (for export). */
  snapshot(): SVGSVGElement {
    const [w, h] = this.viewSize();
    const copy = this.svg.cloneNode(true) as SVGSVGElement;
    copy.querySelectorAll(".hits").forEach((n) => n.remove());
    copy.setAttribute("width", String(Math.round(w)));
    copy.setAttribute("height", String(Math.round(h)));
    return copy;
  }
}
