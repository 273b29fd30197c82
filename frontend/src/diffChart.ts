/**
 * The Eq. 9 curve under the river (paper Sec. 5.2): diff(l) = d(adv, src) - d(adv, tgt)
 * per layer, the last-r window that Eq. 10 reads shaded, and its verdict in words.
 */

import { svgEl, svgTitle } from "./dom";
import { formatValue } from "./scales";

export interface Verdict {
  detected: boolean;
  /** How many of the last r steps rise. */
  rises: number;
  r: number;
  text: string;
}

/**
 * Eq. 10 in words for a logged detection: `diff` is the curve detection ran on (the
 * paper's L2 one), `r` its window, `diverging` / `merging` the logged layers (indices),
 * `name(l)` a layer's display name.
 */
export function verdict(diff: number[], r: number, detected: boolean, diverging: number | null, merging: number | null,
  name: (layer: number) => string): Verdict {
  const L = diff.length;
  const window = Math.max(0, Math.min(r, L - 1));
  const falls: number[] = [];
  for (let l = L - window; l < L; l++) if (!(diff[l] > diff[l - 1])) falls.push(l);
  const rises = window - falls.length;
  if (detected) {
    const from = diverging === null ? "" : `diverges at ${name(diverging)}, `;
    return { detected, rises, r: window, text: `Pattern (Eq. 10): ${from}merges at ${merging === null ? name(L - 1) : name(merging)} — diff rises over all of the last ${window} layers and peaks at the last.` };
  }
  let why: string;
  if (falls.length > 0) {
    why = `diff falls at ${falls.length} of the last ${window} layers (${falls.slice(0, 3).map(name).join(", ")}${falls.length > 3 ? ", …" : ""})`;
  } else {
    why = "the last layer is not the curve's maximum";
  }
  const candidate = merging === null ? " The adversarial datapath is never closer to the target than to the source."
    : ` Best candidate: ${diverging === null ? "" : `diverging ${name(diverging)}, `}merging ${name(merging)}.`;
  return { detected, rises, r: window, text: `No pattern (Eq. 10): ${why}.${candidate}` };
}

export interface ChartGeometry {
  /** Screen x of each layer (null when not drawn). */
  xs: Array<number | null>;
  top: number;
  height: number;
  left: number;
  right: number;
}

/** Draw the diff curve into `layer` (screen coordinates); `window` shades the last r layers. */
export function drawDiffChart(layer: SVGGElement, values: number[], r: number, g: ChartGeometry, unit: string): void {
  const points = values.map((v, l) => (g.xs[l] === null || !Number.isFinite(v) ? null : [g.xs[l]!, v] as [number, number])).filter((p): p is [number, number] => p !== null);
  if (points.length === 0) return;
  const lo = Math.min(0, ...points.map((p) => p[1]));
  const hi = Math.max(0, ...points.map((p) => p[1]));
  const span = hi - lo || 1;
  // The caption takes the chart's top 16 px; the curve the rest.
  const y = (v: number) => g.top + 18 + (1 - (v - lo) / span) * (g.height - 24);
  layer.appendChild(svgEl("rect", { class: "chart-frame", x: g.left, y: g.top, width: Math.max(0, g.right - g.left), height: g.height, fill: "#fafafa" }));
  const L = values.length;
  const first = g.xs[Math.max(0, L - 1 - r)];
  const last = g.xs[L - 1];
  if (first !== null && last !== null && r > 0) {
    layer.appendChild(svgEl("rect", { class: "last-r-window", x: first, y: g.top, width: Math.max(2, last - first), height: g.height, fill: "rgba(121,134,203,0.16)" }, [
      svgTitle(`Eq. 10 window: the last ${r} layers must all rise and the last must be the maximum`),
    ]));
  }
  layer.appendChild(svgEl("line", { class: "zero-line", x1: g.left, x2: g.right, y1: y(0), y2: y(0), stroke: "#757575", "stroke-dasharray": "2 3" }));
  const d = points.map((p, k) => `${k ? "L" : "M"}${p[0].toFixed(1)},${y(p[1]).toFixed(1)}`).join(" ");
  layer.appendChild(svgEl("path", { class: "diff-curve", d, fill: "none", stroke: "#37474f", "stroke-width": 1.6 }));
  for (const [x, v] of points) {
    layer.appendChild(svgEl("circle", { class: "diff-point", cx: x, cy: y(v), r: 2.2, fill: v > 0 ? "#9467bd" : "#1f77b4" }));
  }
  layer.appendChild(svgEl("text", { x: g.left + 4, y: g.top + 11, "font-size": 10, fill: "#757575" }, [
    `diff(l) = d(adv, source) − d(adv, target), ${unit}; above 0: closer to the target · max ${formatValue(hi)}, min ${formatValue(lo)} · shaded: the last r = ${r} layers (Eq. 10 window)`,
  ]));
}
