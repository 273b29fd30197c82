/**
 * Geometry of the river (pure): where each gated layer sits on the drawn graph and
 * the smooth constant-width curve of each datapath through those places.
 */

export interface Box {
  /** Centre. */
  x: number;
  y: number;
  width: number;
  height: number;
}

export type Point = [number, number];

/**
 * Anchor point of every gated layer 0..L-1. `boxOf(l)` is the box of the visible
 * node showing layer l; layers sharing a box (a collapsed group) are spread evenly
 * across its width in layer order.
 */
export function layerAnchors(numLayers: number, boxOf: (layer: number) => Box | undefined): Array<Point | null> {
  const shared = new Map<Box, number[]>();
  for (let l = 0; l < numLayers; l++) {
    const box = boxOf(l);
    if (!box) continue;
    if (!shared.has(box)) shared.set(box, []);
    shared.get(box)!.push(l);
  }
  const anchors: Array<Point | null> = Array.from({ length: numLayers }, () => null);
  for (const [box, layers] of shared) {
    const n = layers.length;
    layers.forEach((l, k) => {
      const x = n === 1 ? box.x : box.x - box.width / 2 + ((k + 0.5) * box.width) / n;
      anchors[l] = [x, box.y];
    });
  }
  return anchors;
}

/**
 * Points of one datapath: at each anchored layer, the anchor shifted across the river
 * by (y - 0.5) * bandWidth (y in [0, 1] from the backend). Layers without an anchor
 * are skipped.
 */
export function riverPoints(anchors: Array<Point | null>, ys: number[], bandWidth: number): Point[] {
  const points: Point[] = [];
  anchors.forEach((a, l) => {
    if (a === null || l >= ys.length || !Number.isFinite(ys[l])) return;
    points.push([a[0], a[1] + (ys[l] - 0.5) * bandWidth]);
  });
  return points;
}

function fmt(v: number): string {
  return String(Math.round(v * 100) / 100);
}

/**
 * SVG path through the points: a Catmull-Rom spline as cubic Bezier segments (the
 * curve passes through every point), or a straight line for two points.
 */
export function smoothPath(points: Point[]): string {
  if (points.length === 0) return "";
  const parts = [`M${fmt(points[0][0])},${fmt(points[0][1])}`];
  if (points.length === 1) return parts[0];
  for (let i = 0; i + 1 < points.length; i++) {
    const p0 = points[Math.max(0, i - 1)];
    const p1 = points[i];
    const p2 = points[i + 1];
    const p3 = points[Math.min(points.length - 1, i + 2)];
    const c1: Point = [p1[0] + (p2[0] - p0[0]) / 6, p1[1] + (p2[1] - p0[1]) / 6];
    const c2: Point = [p2[0] - (p3[0] - p1[0]) / 6, p2[1] - (p3[1] - p1[1]) / 6];
    parts.push(`C${fmt(c1[0])},${fmt(c1[1])} ${fmt(c2[0])},${fmt(c2[1])} ${fmt(p2[0])},${fmt(p2[1])}`);
  }
  return parts.join(" ");
}
