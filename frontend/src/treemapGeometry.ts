/** Fill geometry of treemap cells (pure): the paper's solid and dotted fill heights. */

import type { Rect } from "./panZoom";

export interface CellBox {
  x: number;
  y: number;
  dx: number;
  dy: number;
}

/**
 * Rectangle filled from the bottom of `cell` to a height proportional to
 * |value| / maxValue (clamped to the cell); null when there is nothing to fill.
 */
export function bottomFill(cell: CellBox, value: number | null, maxValue: number, inset = 0): Rect | null {
  if (value === null || !Number.isFinite(value) || !(maxValue > 0)) return null;
  const innerW = cell.dx - 2 * inset;
  const innerH = cell.dy - 2 * inset;
  if (innerW <= 0 || innerH <= 0) return null;
  const height = Math.min(1, Math.abs(value) / maxValue) * innerH;
  if (height <= 0) return null;
  return { x: cell.x + inset, y: cell.y + cell.dy - inset - height, width: innerW, height };
}

/** Largest |contribution| among the cells (0 when none has one). */
export function maxAbsContribution(cells: Array<{ contribution: number | null }>): number {
  let max = 0;
  for (const c of cells) {
    if (c.contribution !== null && Number.isFinite(c.contribution)) max = Math.max(max, Math.abs(c.contribution));
  }
  return max;
}

/** Opacity of a cell no start selected (its lowest member stability is 0). */
export const MIN_STABILITY_OPACITY = 0.25;

/** Opacity of a cell whose member datapaths' stability is `stability`: 1 when every start
 * selected the map in every member (or no stability was computed), falling linearly with the
 * lowest member's stability to MIN_STABILITY_OPACITY at 0. */
export function stabilityOpacity(stability: number[] | null | undefined): number {
  if (!stability || stability.length === 0) return 1;
  const lowest = Math.min(...stability.map((v) => (Number.isFinite(v) ? Math.min(1, Math.max(0, v)) : 1)));
  return MIN_STABILITY_OPACITY + (1 - MIN_STABILITY_OPACITY) * lowest;
}

/** Key of a set of example indices, order-free: "0,2". */
export function membersKey(members: number[]): string {
  return [...members].sort((a, b) => a - b).join(",");
}
