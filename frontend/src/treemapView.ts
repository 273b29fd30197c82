/**
 * Layer level: the treemap of shared and unique feature maps of the chosen datapaths
 * at one layer (geometry from the backend). Solid fill height: activation difference
 * A - B; dotted fill height: contribution; opacity: stability over the extraction's starts.
 * Hover shows the values, click opens a cell.
 */

import { bottomFill, maxAbsContribution, membersKey, stabilityOpacity } from "./treemapGeometry";
import { clear, el, svgEl, svgTitle } from "./dom";
import { formatValue } from "./scales";
import type { TreemapData } from "./types";

export interface TreemapInput {
  data: TreemapData;
  /** Example index -> name and colour of its datapath. */
  names: Map<number, string>;
  colors: Map<number, string>;
  diff: [number, number];
  /** What the cells' contribution values measure, or null when none were computed. */
  contributionLabel: string | null;
  selectedChannel: number | null;
  onOpenChannel: (channel: number) => void;
}

const INSET = 1;

export class TreemapView {
  readonly element: HTMLDivElement;
  private readonly tooltip: HTMLDivElement;
  private svg: SVGSVGElement | null = null;

  constructor() {
    this.tooltip = el("div", { class: "tooltip", role: "tooltip" });
    this.tooltip.hidden = true;
    this.element = el("div", { class: "treemap" });
  }

  /** Draw the treemap; returns the number of cells drawn. */
  render(input: TreemapInput): number {
    clear(this.element);
    this.tooltip.hidden = true; // a redraw never keeps a tooltip of old values
    const { data } = input;
    const [a, b] = input.diff;
    const nameOf = (i: number) => input.names.get(i) ?? `#${i}`;
    const maxContribution = maxAbsContribution(data.cells);
    const svg = svgEl("svg", { class: "treemap-svg", width: data.width, height: data.height, viewBox: `0 0 ${data.width} ${data.height}` }, [
      svgEl("defs", {}, [
        svgEl("pattern", { id: "aevis-dots", width: 4, height: 4, patternUnits: "userSpaceOnUse" }, [
          svgEl("circle", { cx: 2, cy: 2, r: 1.1, fill: "#37474f" }),
        ]),
      ]),
      svgEl("rect", { x: 0, y: 0, width: data.width, height: data.height, fill: "#ffffff" }),
    ]);
    const cellsLayer = svgEl("g", { class: "cells" });
    for (const cell of data.cells) {
      const stability = cell.stability ?? null;
      const g = svgEl("g", {
        class: "treemap-cell", "data-channel": cell.channel, "data-members": membersKey(cell.members), cursor: "pointer",
        ...(stability ? { "data-stability": stability.join(","), opacity: stabilityOpacity(stability).toFixed(3) } : {}),
      });
      const selected = cell.channel === input.selectedChannel;
      g.appendChild(svgEl("rect", {
        x: cell.x + INSET / 2, y: cell.y + INSET / 2, width: Math.max(0, cell.dx - INSET), height: Math.max(0, cell.dy - INSET),
        fill: "#f5f5f5", stroke: selected ? "#d84315" : "#ffffff", "stroke-width": selected ? 2 : INSET,
      }));
      const solid = bottomFill(cell, cell.activation_diff, data.max_abs_activation_diff, INSET);
      if (solid && cell.activation_diff !== null) {
        const stronger = cell.activation_diff >= 0 ? a : b;
        g.appendChild(svgEl("rect", { class: "fill-activation", x: solid.x, y: solid.y, width: solid.width, height: solid.height, fill: input.colors.get(stronger) ?? "#757575", "fill-opacity": 0.75 }));
      }
      // Dotted contribution fill on the right half, over the solid fill, so both stay readable.
      const dotted = bottomFill(cell, cell.contribution, maxContribution, INSET);
      if (dotted) {
        g.appendChild(svgEl("rect", { class: "fill-contribution", x: dotted.x + dotted.width / 2, y: dotted.y, width: dotted.width / 2, height: dotted.height, fill: "url(#aevis-dots)" }));
      }
      const members = cell.members.map(nameOf).join(", ");
      g.appendChild(svgTitle(`feature map ${cell.channel}`));
      g.addEventListener("mousemove", (ev) => {
        this.showTooltip(ev, [
          `feature map ${cell.channel}`,
          `in datapaths: ${members}`,
          `activation ${nameOf(a)} − ${nameOf(b)}: ${formatValue(cell.activation_diff)}`,
          `contribution: ${cell.contribution === null ? "not computed" : formatValue(cell.contribution)}`,
          stability
            ? `stability (share of the starts that selected it): ${cell.members.map((m, k) => `${nameOf(m)} ${Math.round(100 * stability[k])} %`).join(", ")}`
            : "stability: one start (not computed)",
        ]);
      });
      g.addEventListener("mouseleave", () => (this.tooltip.hidden = true));
      g.addEventListener("click", () => input.onOpenChannel(cell.channel));
      cellsLayer.appendChild(g);
    }
    svg.appendChild(cellsLayer);
    // Outlines: each datapath's container in its colour, shared regions dashed inside.
    const outlines = svgEl("g", { class: "sets", "pointer-events": "none" });
    for (const set of data.sets) {
      if (!set.shared) continue;
      outlines.appendChild(svgEl("rect", {
        class: "treemap-set", "data-members": membersKey(set.members), x: set.x, y: set.y, width: set.dx, height: set.dy,
        fill: "none", stroke: "#424242", "stroke-width": 1.5, "stroke-dasharray": "5 3",
      }, [svgTitle(set.label)]));
    }
    for (const box of data.containers) {
      outlines.appendChild(svgEl("rect", {
        class: "treemap-container datapath-outline", "data-example": box.example, x: box.x + 1, y: box.y + 1, width: Math.max(0, box.dx - 2), height: Math.max(0, box.dy - 2),
        fill: "none", stroke: input.colors.get(box.example) ?? "#616161", "stroke-width": 2.5,
      }, [svgTitle(`${box.label}'s datapath`)]));
    }
    // A datapath without maps of its own (all its maps shared with a larger one) is outlined
    // around each region holding its maps, inset so the owner's outline stays visible.
    const owners = new Set(data.containers.map((c) => c.example));
    const inset = 4;
    for (const example of data.examples) {
      if (owners.has(example)) continue;
      for (const set of data.sets.filter((r) => r.members.includes(example))) {
        outlines.appendChild(svgEl("rect", {
          class: "datapath-outline inner", "data-example": example, x: set.x + inset, y: set.y + inset,
          width: Math.max(0, set.dx - 2 * inset), height: Math.max(0, set.dy - 2 * inset),
          fill: "none", stroke: input.colors.get(example) ?? "#616161", "stroke-width": 2.5, "stroke-dasharray": "6 3",
        }, [svgTitle(`${nameOf(example)}'s datapath: no maps of its own, all shared (${set.label})`)]));
      }
    }
    // Region labels: "A only", "A ∩ B", ... where they fit.
    const labels = svgEl("g", { class: "region-labels", "pointer-events": "none" });
    for (const set of data.sets) {
      const text = set.shared ? set.label : `${set.label} only`;
      const fits = Math.floor((set.dx - 8) / 6.4);
      if (fits < 4 || set.dy < 16) continue;
      labels.appendChild(svgEl("text", {
        class: "region-label", "data-members": membersKey(set.members), x: set.x + 5, y: set.y + 13, "font-size": 11, "font-weight": 500,
        fill: "#212121", stroke: "#ffffff", "stroke-width": 3, "paint-order": "stroke", "font-family": "Roboto, sans-serif",
      }, [text.length > fits ? text.slice(0, fits - 1) + "…" : text]));
    }
    svg.append(outlines, labels);
    this.svg = svg;

    const containerRows = data.examples.map((example) => {
      const box = data.containers.find((c) => c.example === example);
      const kept = data.sets.filter((r) => r.members.includes(example)).reduce((n, r) => n + r.size, 0);
      const what = box ? `${box.set_size} feature map${box.set_size === 1 ? "" : "s"} in its datapath`
        : kept > 0 ? `${kept} feature map${kept === 1 ? "" : "s"}, no maps of its own (all shared; dashed inner outline)`
          : "keeps no feature map of this layer";
      return el("li", { "data-example": example }, [
        el("span", { class: "swatch", style: `border-color:${input.colors.get(example) ?? "#616161"}${box ? "" : ";border-style:dashed"}` }),
        `${nameOf(example)}: ${what}`,
      ]);
    });
    const sharedRows = data.sets.filter((set) => set.shared).map((set) =>
      el("li", {}, [el("span", { class: "swatch", style: "border-color:#424242;border-style:dashed" }), `${set.label}: ${set.size} shared`]),
    );
    const legend = el("div", { class: "treemap-legend" }, [
      el("div", {}, [
        el("span", { class: "fill-key solid" }),
        `solid fill: activation difference ${nameOf(a)} − ${nameOf(b)} (max of each feature map; colour of the datapath where it is larger; full cell = ${formatValue(data.max_abs_activation_diff)})`,
      ]),
      el("div", {}, [
        el("span", { class: "fill-key dotted" }),
        input.contributionLabel && maxContribution > 0
          ? `dotted fill (right half): ${input.contributionLabel} (full = ${formatValue(maxContribution)})`
          : "dotted fill: contribution (none computed for this layer; use “Contribution to prediction” or trace from a feature map)",
      ]),
      ...(data.cells.some((c) => c.stability)
        ? [el("div", { class: "stability-key" }, [
          el("span", { class: "fill-key faded" }),
          "faded cell: not every start of the extraction selected this map (opacity falls with the lowest share of starts among its datapaths; opaque = all starts)",
        ])]
        : []),
      el("ul", { class: "set-list" }, [...containerRows, ...sharedRows]),
    ]);
    if (data.cells.length === 0) {
      // Nothing to lay out: say so, without an empty box.
      this.svg = null;
      this.element.append(el("div", { class: "note empty-layer" }, ["None of the chosen datapaths keeps a feature map of this layer."]), legend);
      return 0;
    }
    this.element.append(el("div", { class: "treemap-canvas" }, [svg, this.tooltip]), legend);
    return data.cells.length;
  }

  private showTooltip(ev: MouseEvent, lines: string[]): void {
    clear(this.tooltip);
    lines.forEach((line, i) => this.tooltip.appendChild(el("div", { class: i === 0 ? "tooltip-title" : "" }, [line])));
    const box = (this.tooltip.parentElement ?? this.element).getBoundingClientRect();
    this.tooltip.style.left = `${Math.min(ev.clientX - box.left + 14, Math.max(0, box.width - 240))}px`;
    this.tooltip.style.top = `${ev.clientY - box.top + 14}px`;
    this.tooltip.hidden = false;
  }

  /** The treemap as drawn now with `title` above and its legend below (for export), or null before the first render. */
  snapshot(title: string): SVGSVGElement | null {
    if (!this.svg) return null;
    const w = Number(this.svg.getAttribute("width"));
    const h = Number(this.svg.getAttribute("height"));
    const lines = [...this.element.querySelectorAll(".treemap-legend > div, .treemap-legend li")].map((n) => n.textContent ?? "");
    const head = 28;
    const total = head + h + 10 + 16 * lines.length;
    const out = svgEl("svg", { width: w, height: total, viewBox: `0 0 ${w} ${total}` }, [
      svgEl("rect", { x: 0, y: 0, width: w, height: total, fill: "#ffffff" }),
      svgEl("text", { class: "export-title", x: 4, y: 19, "font-size": 14, "font-weight": 500, fill: "#212121", "font-family": "Roboto, sans-serif" }, [title]),
    ]);
    const body = this.svg.cloneNode(true) as SVGSVGElement;
    body.setAttribute("y", String(head));
    out.appendChild(body);
    const legend = svgEl("g", { class: "export-legend", "font-size": 11, fill: "#424242", "font-family": "Roboto, sans-serif" });
    lines.forEach((line, i) => legend.appendChild(svgEl("text", { x: 4, y: head + h + 20 + 16 * i }, [line])));
    out.appendChild(legend);
    return out;
  }
}
