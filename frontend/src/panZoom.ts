/** Pan-and-zoom transforms (pure): screen = content * k + (x, y). */

export interface Transform {
  k: number;
  x: number;
  y: number;
}

export interface Rect {
  x: number;
  y: number;
  width: number;
  height: number;
}

export const IDENTITY: Transform = { k: 1, x: 0, y: 0 };

/** Zoom by `factor` keeping the content point under screen point (px, py) fixed; k stays in [kMin, kMax]. */
export function zoomAt(t: Transform, factor: number, px: number, py: number, kMin: number, kMax: number): Transform {
  const k = Math.min(kMax, Math.max(kMin, t.k * factor));
  const cx = (px - t.x) / t.k;
  const cy = (py - t.y) / t.k;
  return { k, x: px - cx * k, y: py - cy * k };
}

export function panBy(t: Transform, dx: number, dy: number): Transform {
  return { k: t.k, x: t.x + dx, y: t.y + dy };
}

/** Transform showing all of `content` centred in a viewport of the given size, never enlarged beyond kMax. */
export function fitTransform(content: Rect, viewWidth: number, viewHeight: number, padding: number, kMax: number): Transform {
  const w = Math.max(content.width, 1);
  const h = Math.max(content.height, 1);
  const k = Math.min(kMax, (viewWidth - 2 * padding) / w, (viewHeight - 2 * padding) / h);
  const kk = k > 0 ? k : kMax;
  return {
    k: kk,
    x: (viewWidth - w * kk) / 2 - content.x * kk,
    y: (viewHeight - h * kk) / 2 - content.y * kk,
  };
}

/** The content rectangle visible through a viewport of the given size. */
export function visibleContent(t: Transform, viewWidth: number, viewHeight: number): Rect {
  return { x: -t.x / t.k, y: -t.y / t.k, width: viewWidth / t.k, height: viewHeight / t.k };
}

/** Transform that centres content point (cx, cy) in the viewport at the current zoom. */
export function centreOn(t: Transform, cx: number, cy: number, viewWidth: number, viewHeight: number): Transform {
  return { k: t.k, x: viewWidth / 2 - cx * t.k, y: viewHeight / 2 - cy * t.k };
}
