/** Export of a drawn view as a standalone SVG file or a PNG image. */

const SVG_NS = "http://www.w3.org/2000/svg";

/** Standalone SVG markup of `svg` (namespace declared, explicit pixel size). */
export function svgMarkup(svg: SVGSVGElement): string {
  const copy = svg.cloneNode(true) as SVGSVGElement;
  copy.setAttribute("xmlns", SVG_NS);
  copy.setAttribute("version", "1.1");
  return '<?xml version="1.0" encoding="UTF-8"?>\n' + new XMLSerializer().serializeToString(copy);
}

function svgSize(svg: SVGSVGElement): [number, number] {
  const w = Number(svg.getAttribute("width"));
  const h = Number(svg.getAttribute("height"));
  if (!(w > 0 && h > 0)) throw new Error("the view has no pixel size to export; draw it first");
  return [w, h];
}

/** Rasterise `svg` at `scale` times its pixel size into a PNG blob. */
export async function svgToPng(svg: SVGSVGElement, scale = 2): Promise<Blob> {
  const [w, h] = svgSize(svg);
  const url = URL.createObjectURL(new Blob([svgMarkup(svg)], { type: "image/svg+xml" }));
  try {
    const img = new Image();
    img.src = url;
    await img.decode();
    const canvas = document.createElement("canvas");
    canvas.width = Math.round(w * scale);
    canvas.height = Math.round(h * scale);
    const ctx = canvas.getContext("2d")!;
    ctx.fillStyle = "#ffffff";
    ctx.fillRect(0, 0, canvas.width, canvas.height);
    ctx.scale(scale, scale);
    ctx.drawImage(img, 0, 0, w, h);
    return await new Promise<Blob>((resolve, reject) =>
      canvas.toBlob((b) => (b ? resolve(b) : reject(new Error("the browser could not encode the PNG"))), "image/png"),
    );
  } finally {
    URL.revokeObjectURL(url);
  }
}

/** Save `blob` under `filename` through the browser's download. */
export function download(blob: Blob, filename: string): void {
  const url = URL.createObjectURL(blob);
  const a = document.createElement("a");
  a.href = url;
  a.download = filename;
  document.body.appendChild(a);
  a.click();
  a.remove();
  setTimeout(() => URL.revokeObjectURL(url), 10_000);
}

export async function exportSvg(svg: SVGSVGElement, basename: string): Promise<void> {
  svgSize(svg);
  download(new Blob([svgMarkup(svg)], { type: "image/svg+xml" }), `${basename}.svg`);
}

export async function exportPng(svg: SVGSVGElement, basename: string): Promise<void> {
  download(await svgToPng(svg), `${basename}.png`);
}

/** A file-name-safe form of the view's name. */
export function fileStem(parts: string[]): string {
  return parts.join("_").replace(/[^A-Za-z0-9._-]+/g, "-").replace(/^[-.]+|-+$/g, "").slice(0, 120) || "aevis";
}
