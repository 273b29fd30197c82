/** Numeric scales and colour ramps (pure). */

export type Scale = (value: number) => number;

/** Linear map of [d0, d1] onto [r0, r1]; a degenerate domain maps to the range's middle. */
export function linearScale(domain: [number, number], range: [number, number]): Scale {
  const [d0, d1] = domain;
  const [r0, r1] = range;
  if (d1 === d0) return () => (r0 + r1) / 2;
  const slope = (r1 - r0) / (d1 - d0);
  return (value: number) => r0 + (value - d0) * slope;
}

export function clamp(value: number, lo: number, hi: number): number {
  return Math.min(hi, Math.max(lo, value));
}

type Rgb = [number, number, number];

/** Light to dark green: the paper's activation encoding ("darker green, higher value"). */
const GREEN_STOPS: Rgb[] = [
  [247, 252, 245],
  [199, 233, 192],
  [116, 196, 118],
  [35, 139, 69],
  [0, 68, 27],
];

/** Colour of t in [0, 1] on the green ramp as [r, g, b] bytes (t is clamped). */
export function greenRamp(t: number): Rgb {
  const x = clamp(Number.isFinite(t) ? t : 0, 0, 1) * (GREEN_STOPS.length - 1);
  const i = Math.min(Math.floor(x), GREEN_STOPS.length - 2);
  const f = x - i;
  const a = GREEN_STOPS[i];
  const b = GREEN_STOPS[i + 1];
  return [0, 1, 2].map((c) => Math.round(a[c] + (b[c] - a[c]) * f)) as Rgb;
}

export function rgbCss([r, g, b]: Rgb): string {
  return `rgb(${r}, ${g}, ${b})`;
}

/**
 * A 256-entry lookup table (256 * 4 RGBA bytes) mapping a grey level 0..255 to the
 * green ramp, for colouring grey-scale activation-map PNGs on a canvas.
 */
export function greenLookupTable(): Uint8ClampedArray {
  const table = new Uint8ClampedArray(256 * 4);
  for (let level = 0; level < 256; level++) {
    const [r, g, b] = greenRamp(level / 255);
    table.set([r, g, b, 255], level * 4);
  }
  return table;
}

/** Value at grey level `level` (0..255) of a PNG quantised over [min, max]. */
export function dequantise(level: number, min: number, max: number): number {
  return min + (level / 255) * (max - min);
}

/** Parse the `X-AEVis-Range` header (`"min,max"`); null when absent or malformed. */
export function parseRangeHeader(header: string | null): [number, number] | null {
  if (header === null) return null;
  const parts = header.split(",").map((p) => Number(p.trim()));
  if (parts.length !== 2 || !parts.every(Number.isFinite) || parts[1] < parts[0]) return null;
  return [parts[0], parts[1]];
}

/** Short human form of a number: 3 significant digits, exponent for very large/small values. */
export function formatValue(value: number | null | undefined): string {
  if (value === null || value === undefined || Number.isNaN(value)) return "n/a";
  if (value === 0) return "0";
  const magnitude = Math.abs(value);
  if (magnitude >= 1e4 || magnitude < 1e-3) return value.toExponential(2);
  return String(Number(value.toPrecision(3)));
}
