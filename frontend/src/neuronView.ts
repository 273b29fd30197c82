/**
 * Neuron level: one feature map's activation map over each example image (green:
 * darker is higher), its max activation and gate per example, and its learned
 * features (top-activating reference crops) with their activations, each beside its
 * whole reference image with the receptive-field box drawn on it.
 */

import { getRangedImage } from "./api";
import { clear, el } from "./dom";
import { dequantise, formatValue, greenLookupTable, greenRamp, rgbCss } from "./scales";
import type { LearnedFeature, NeuronData } from "./types";

export interface NeuronInput {
  data: NeuronData;
  /** Controls placed under the title (e.g. the contribution tracer). */
  actions: HTMLElement | null;
  names: Map<number, string>;
  colors: Map<number, string>;
  imageUrl: (example: number) => string;
  /** Shown beside the maps (e.g. the contribution result), so both stay in view. */
  aside?: HTMLElement;
  /** Called on mouse-up after an area was brushed (the area is then `area()`). */
  onArea?: (area: AreaSelection) => void;
}

const MAP_SIZE = 112;
/** Shown width of a learned feature's whole reference image (its height keeps the aspect). */
const REFERENCE_SIZE = 72;
const LUT = greenLookupTable();

/**
 * Draw a grey-scale bitmap quantised over `own` onto `canvas` through the green ramp
 * spanning `scale` (values outside are clipped); returns the grey levels (H*W).
 */
function paintGreen(canvas: HTMLCanvasElement, bitmap: ImageBitmap, own: [number, number], scale: [number, number]): Uint8ClampedArray {
  canvas.width = bitmap.width;
  canvas.height = bitmap.height;
  const ctx = canvas.getContext("2d")!;
  ctx.drawImage(bitmap, 0, 0);
  const image = ctx.getImageData(0, 0, bitmap.width, bitmap.height);
  const levels = new Uint8ClampedArray(bitmap.width * bitmap.height);
  const span = scale[1] - scale[0];
  for (let p = 0; p < levels.length; p++) {
    const level = image.data[p * 4];
    levels[p] = level;
    const value = dequantise(level, own[0], own[1]);
    const shown = span > 0 ? Math.round(Math.min(1, Math.max(0, (value - scale[0]) / span)) * 255) : 0;
    image.data.set(LUT.subarray(shown * 4, shown * 4 + 4), p * 4);
  }
  ctx.putImageData(image, 0, 0);
  return levels;
}

/** The colour scale of a feature map's activation maps: one range for all (shared) or each map's own. */
export function sharedRange(ranges: Array<[number, number]>): [number, number] {
  return [Math.min(...ranges.map((r) => r[0])), Math.max(...ranges.map((r) => r[1]))];
}

/** Percent offsets (left, top, width, height) of `box` = [y0, x0, y1, x1] in a `width` x `height` image, clipped to it. */
export function boxPercent(box: [number, number, number, number], width: number, height: number): [number, number, number, number] {
  const clip = (v: number, hi: number) => Math.min(hi, Math.max(0, v));
  const [y0, x0, y1, x1] = [clip(box[0], height), clip(box[1], width), clip(box[2], height), clip(box[3], width)];
  return [(100 * x0) / width, (100 * y0) / height, (100 * (x1 - x0)) / width, (100 * (y1 - y0)) / height];
}

/** The whole reference image with the learned feature's receptive-field box drawn on it. */
function learnedFeatureSource(f: LearnedFeature): HTMLElement {
  const image = el("img", { src: f.reference_url, alt: `reference image ${f.reference_image}`, width: REFERENCE_SIZE });
  const box = el("div", { class: "rf-box" });
  box.hidden = true;
  image.addEventListener("load", () => {
    const [left, top, width, height] = boxPercent(f.box, image.naturalWidth, image.naturalHeight);
    Object.assign(box.style, { left: `${left}%`, top: `${top}%`, width: `${width}%`, height: `${height}%` });
    box.hidden = false;
  });
  return el("div", { class: "reference" }, [image, box]);
}

/** A rectangle of neurons chosen on an activation map: [y0, x0, y1, x1) in a grid of [h, w]. */
interface LoadedMap {
  canvas: HTMLCanvasElement;
  mapBox: HTMLElement;
  readout: HTMLElement;
  bitmap: ImageBitmap;
  range: [number, number];
  /** False when the backend sent no range (grey levels read as 0..1). */
  sent: boolean;
}

export interface AreaSelection {
  area: [number, number, number, number];
  grid: [number, number];
}

export class NeuronView {
  readonly element: HTMLDivElement;
  /** One colour scale for every example's map of the feature map (false: each map its own range). */
  private shared = true;
  private last: NeuronInput | null = null;
  private selection: AreaSelection | null = null;
  private readonly overlays: HTMLDivElement[] = [];

  constructor() {
    this.element = el("div", { class: "neuron" });
  }

  /** The area last dragged on an activation map (the same neurons in every example), or null. */
  area(): AreaSelection | null {
    return this.selection;
  }

  private showSelection(): void {
    for (const overlay of this.overlays) {
      const canvas = overlay.parentElement?.querySelector("canvas");
      if (!this.selection || !canvas) {
        overlay.hidden = true;
        continue;
      }
      const [y0, x0, y1, x1] = this.selection.area;
      const [h, w] = this.selection.grid;
      overlay.hidden = false;
      overlay.style.left = `${canvas.offsetLeft + (x0 / w) * canvas.clientWidth}px`;
      overlay.style.top = `${canvas.offsetTop + (y0 / h) * canvas.clientHeight}px`;
      overlay.style.width = `${((x1 - x0) / w) * canvas.clientWidth}px`;
      overlay.style.height = `${((y1 - y0) / h) * canvas.clientHeight}px`;
    }
  }

  /** Let the user drag a rectangle of neurons on `canvas` (grid = the map's pixels). */
  private installAreaSelection(canvas: HTMLCanvasElement, mapBox: HTMLElement): void {
    const overlay = el("div", { class: "area-overlay" });
    overlay.hidden = true;
    mapBox.appendChild(overlay);
    this.overlays.push(overlay);
    const cellAt = (ev: PointerEvent): [number, number] => {
      const r = canvas.getBoundingClientRect();
      const col = Math.floor(((ev.clientX - r.left) / r.width) * canvas.width);
      const row = Math.floor(((ev.clientY - r.top) / r.height) * canvas.height);
      return [Math.min(canvas.height - 1, Math.max(0, row)), Math.min(canvas.width - 1, Math.max(0, col))];
    };
    let start: [number, number] | null = null;
    canvas.addEventListener("pointerdown", (ev) => {
      start = cellAt(ev);
      canvas.setPointerCapture(ev.pointerId);
    });
    canvas.addEventListener("pointermove", (ev) => {
      if (!start) return;
      const [r, c] = cellAt(ev);
      this.selection = {
        area: [Math.min(start[0], r), Math.min(start[1], c), Math.max(start[0], r) + 1, Math.max(start[1], c) + 1],
        grid: [canvas.height, canvas.width],
      };
      this.showSelection();
    });
    canvas.addEventListener("pointerup", () => {
      const brushed = start !== null && this.selection !== null;
      start = null;
      if (brushed) this.last?.onArea?.(this.selection!);
    });
  }

  /** Draw the panel; resolves when every activation map is painted, with the number painted. */
  async render(input: NeuronInput): Promise<number> {
    this.last = input;
    clear(this.element);
    this.selection = null;
    this.overlays.length = 0;
    const { data } = input;
    const cards = el("div", { class: "neuron-examples" });
    const pending: Array<Promise<LoadedMap | null>> = [];
    for (const ex of data.examples) {
      const name = input.names.get(ex.example) ?? `#${ex.example}`;
      const readout = el("div", { class: "readout" }, ["hover the map for values"]);
      const canvas = el("canvas", { class: "activation-canvas", width: 1, height: 1, style: `width:${MAP_SIZE}px;height:${MAP_SIZE}px` });
      const mapBox = el("div", { class: "activation-map", "data-example": ex.example });
      const card = el("div", { class: "neuron-example", style: `border-top-color:${input.colors.get(ex.example) ?? "#9e9e9e"}` }, [
        el("div", { class: "card-title" }, [name]),
        el("div", { class: "pair" }, [
          el("img", { src: input.imageUrl(ex.example), alt: `image of ${name}`, width: MAP_SIZE, height: MAP_SIZE }),
          mapBox,
        ]),
        el("div", { class: "values" }, [
          `max activation ${formatValue(ex.max_activation)} · gate ${formatValue(ex.gate)} · `,
          el("span", { class: ex.in_datapath ? "in-path" : "out-path" }, [ex.in_datapath ? "in datapath" : "not in datapath"]),
          ...(ex.stability === undefined || ex.stability === null ? [] : [
            el("span", { class: "stability", title: "fraction of the extraction's starts whose datapath selected this feature map" },
               [` · selected by ${Math.round(ex.stability * 100)} % of starts`]),
          ]),
        ]),
        readout,
      ]);
      cards.appendChild(card);
      if (ex.activation_map === null) {
        mapBox.appendChild(el("div", { class: "note" }, ["no activation map logged for this feature map"]));
        continue;
      }
      mapBox.appendChild(canvas);
      pending.push(getRangedImage(ex.activation_map).then(
        ({ bitmap, range }) => ({ canvas, mapBox, readout, bitmap, range: range ?? ([0, 1] as [number, number]), sent: range !== null }),
        (err: Error) => {
          mapBox.replaceChildren(el("div", { class: "error" }, [`activation map: ${err.message}`]));
          return null;
        },
      ));
    }
    const features = el("div", { class: "learned-features" });
    if (data.learned_features.length === 0) {
      features.appendChild(el("div", { class: "note" }, ["no learned features logged (log reference images with add_analysis to see them)"]));
    }
    for (const f of data.learned_features) {
      const [y0, x0, y1, x1] = f.box;
      features.appendChild(el("figure", { class: "learned-feature", "data-rank": f.rank }, [
        el("div", { class: "pair" }, [learnedFeatureSource(f), el("img", { class: "crop", src: f.url, alt: `learned feature rank ${f.rank + 1}`, width: 72, height: 72 })]),
        el("figcaption", { title: `reference image ${f.reference_image}, rows ${y0}–${y1 - 1}, columns ${x0}–${x1 - 1}` }, [
          `#${f.rank + 1}: ${formatValue(f.activation)} · image ${f.reference_image}`,
        ]),
      ]));
    }
    const ramp = el("div", { class: "legend-ramp" });
    const toggle = el("input", { type: "checkbox", name: "per-map-scale" });
    toggle.checked = !this.shared;
    toggle.addEventListener("change", () => {
      this.shared = !toggle.checked;
      if (this.last) void this.render(this.last);
    });
    this.element.append(
      el("h3", {}, [`Feature map ${data.channel} of ${data.layer}`]),
      ...(input.actions ? [input.actions] : []),
      el("div", { class: "scale-row" }, [ramp, el("label", { class: "note" }, [toggle, " each map on its own scale"])]),
      el("div", { class: "neuron-row" }, [cards, input.aside ?? null]),
      el("h4", {}, ["Learned features (top-activating reference images: receptive-field box, and its crop)"]),
      features,
    );
    const loaded = (await Promise.all(pending)).filter((m): m is LoadedMap => m !== null);
    const common = loaded.length ? sharedRange(loaded.map((m) => m.range)) : ([0, 1] as [number, number]);
    for (const m of loaded) {
      const scale = this.shared ? common : m.range;
      const levels = paintGreen(m.canvas, m.bitmap, m.range, scale);
      m.canvas.dataset.scale = scale.join(",");
      this.installAreaSelection(m.canvas, m.mapBox);
      const [lo, hi] = m.range;
      m.mapBox.appendChild(el("div", { class: "range" }, [m.sent ? `range ${formatValue(lo)} … ${formatValue(hi)}` : "range not sent (grey levels 0…1)"]));
      m.canvas.addEventListener("mousemove", (ev) => {
        const r = m.canvas.getBoundingClientRect();
        const col = Math.min(m.canvas.width - 1, Math.floor(((ev.clientX - r.left) / r.width) * m.canvas.width));
        const row = Math.min(m.canvas.height - 1, Math.floor(((ev.clientY - r.top) / r.height) * m.canvas.height));
        m.readout.textContent = `(${row}, ${col}): activation ${formatValue(dequantise(levels[row * m.canvas.width + col], lo, hi))}`;
      });
    }
    ramp.append("activation: ", el("span", { class: "ramp-number lo" }, [formatValue(common[0])]), el("span", { class: "ramp" }),
      el("span", { class: "ramp-number hi" }, [formatValue(common[1])]),
      this.shared ? " — one scale for every example's map · drag on a map to select an area of neurons"
        : " — (shared range; each map is now drawn on its own range, shown under it) · drag on a map to select an area of neurons");
    return loaded.length;
  }

  /**
   * The panel as a PNG (title, each example's image and activation map with its values,
   * the colour ramp with its numbers), or null before a feature map is shown.
   */
  async exportPng(title: string): Promise<Blob | null> {
    const cards = [...this.element.querySelectorAll<HTMLElement>(".neuron-example")];
    if (cards.length === 0) return null;
    const cell = MAP_SIZE * 2 + 24;
    const width = Math.max(520, cards.length * cell + 16);
    const height = 64 + MAP_SIZE + 56;
    const canvas = document.createElement("canvas");
    canvas.width = width * 2;
    canvas.height = height * 2;
    const ctx = canvas.getContext("2d")!;
    ctx.scale(2, 2);
    ctx.fillStyle = "#ffffff";
    ctx.fillRect(0, 0, width, height);
    ctx.fillStyle = "#212121";
    ctx.font = "500 14px Roboto, sans-serif";
    ctx.fillText(title, 8, 20);
    const scale = this.element.querySelector(".legend-ramp")?.textContent ?? "";
    ctx.font = "11px Roboto, sans-serif";
    for (let i = 0; i <= 100; i++) {
      ctx.fillStyle = rgbCss(greenRamp(i / 100));
      ctx.fillRect(8 + i * 1.2, 30, 1.3, 10);
    }
    ctx.fillStyle = "#424242";
    ctx.fillText(scale.replace(/ · drag.*$/, ""), 136, 39);
    cards.forEach((card, k) => {
      const x = 8 + k * cell;
      const image = card.querySelector("img");
      const map = card.querySelector("canvas");
      if (image && image.complete) ctx.drawImage(image, x, 52, MAP_SIZE, MAP_SIZE);
      if (map && map.width > 1) {
        ctx.imageSmoothingEnabled = false;
        ctx.drawImage(map, x + MAP_SIZE + 4, 52, MAP_SIZE, MAP_SIZE);
      }
      ctx.fillStyle = "#212121";
      ctx.fillText(card.querySelector(".card-title")?.textContent ?? "", x, 52 + MAP_SIZE + 16);
      ctx.fillStyle = "#616161";
      ctx.fillText(card.querySelector(".values")?.textContent ?? "", x, 52 + MAP_SIZE + 32);
    });
    return await new Promise<Blob | null>((resolve) => canvas.toBlob((b) => resolve(b), "image/png"));
  }
}
