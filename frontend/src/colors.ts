/** One colour per datapath role, with lighter / darker variants for several datapaths of a role. */

import type { Role } from "./types";

/** Base colours: blue for the source, orange for the adversarial, purple for the target (paper Fig. 6). */
export const ROLE_COLORS: Record<Role, string> = {
  source: "#1f77b4",
  adversarial: "#ff7f0e",
  target: "#9467bd",
};

export const ROLE_LABELS: Record<Role, string> = {
  source: "source (normal)",
  adversarial: "adversarial",
  target: "target (normal)",
};

function hexToRgb(hex: string): [number, number, number] {
  const n = parseInt(hex.slice(1), 16);
  return [(n >> 16) & 255, (n >> 8) & 255, n & 255];
}

function rgbToHex([r, g, b]: [number, number, number]): string {
  return "#" + [r, g, b].map((c) => Math.round(c).toString(16).padStart(2, "0")).join("");
}

/**
 * Colour of the `rank`-th datapath (0-based) of `role`: rank 0 is the base colour,
 * later ranks alternate darker and lighter so that paths of one role stay apart.
 */
export function pathColor(role: Role, rank: number): string {
  const base = hexToRgb(ROLE_COLORS[role] ?? "#7f7f7f");
  if (rank <= 0) return rgbToHex(base);
  const step = Math.ceil(rank / 2) * 0.25;
  const towards: [number, number, number] = rank % 2 === 1 ? [0, 0, 0] : [255, 255, 255];
  const f = Math.min(step, 0.75);
  return rgbToHex([0, 1, 2].map((c) => base[c] + (towards[c] - base[c]) * f) as [number, number, number]);
}

/** Colours for a list of datapaths: each gets its role colour, ranked within its role. */
export function pathColors(roles: Role[]): string[] {
  const seen: Partial<Record<Role, number>> = {};
  return roles.map((role) => {
    const rank = seen[role] ?? 0;
    seen[role] = rank + 1;
    return pathColor(role, rank);
  });
}
