/** Readable names (pure): the distinctive end of a module path, and datapath labels without repeated words. */

import { ROLE_LABELS } from "./colors";

function segmentsOf(path: string): string[] {
  return path.split(".");
}

function tidy(segments: string[]): string {
  return segments.map((s) => s.replace(/^_+/, "") || s).join(".");
}

/**
 * Short name of each module path: its shortest ending of at least two segments (or the
 * whole path) that no other path of `paths` ends with and that starts with a name, not
 * an index; leading underscores dropped (`model._blocks.13` -> `blocks.13`,
 * `model._blocks.11._bn2` -> `blocks.11.bn2`, `layer3.2` -> `layer3.2`).
 */
export function shortNames(paths: string[]): Map<string, string> {
  const split = paths.map(segmentsOf);
  const out = new Map<string, string>();
  split.forEach((segments, i) => {
    let n = Math.min(2, segments.length);
    const unique = (k: number) => {
      const end = segments.slice(-k).join(".");
      return split.every((other, j) => j === i || paths[j] === paths[i] || !(other.join(".") === end || other.join(".").endsWith("." + end)));
    };
    while (n < segments.length && (!unique(n) || /^\d+$/.test(segments[segments.length - n]))) n++;
    out.set(paths[i], tidy(segments.slice(-n)));
  });
  return out;
}

/** `name — role`, or `name` alone when it already says its role ("cat (adversarial)"). */
export function datapathLabel(name: string, role: string): string {
  const label = (ROLE_LABELS as Record<string, string>)[role] ?? role;
  return name.toLowerCase().includes(role.toLowerCase()) ? name : `${name} — ${label}`;
}
