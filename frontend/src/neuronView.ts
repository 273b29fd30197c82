/**
 * Neuron level: one feature map's activation map over each example image (green:
 * darker is higher), its max activation and gate per example, and its learned
 * features (top-activating reference crops) with their activations.
 */

import { getRangedImage } from "./api";
import { clear, el } from "./dom";
import { dequantise, formatValue, greenLookupTable } from "./scales";
import type { NeuronData } from "./types";

export interface NeuronInput {
  data: NeuronData;
  names: Map<number, string>;
  colors: Map<number, string>;
  imageUrl: (example: number) => string;
}

const MAP_SIZE = 112;
const LUT = greenLookupTable();

/** Draw a grey-scale bitmap onto `canvas` through the green ramp; returns the grey levels (H*W). */
function paintGreen(canvas: HTMLCanvasElement, bitmap: ImageBitmap): Uint8ClampedArray {
  canvas.width = bitmap.width;
  canvas.height = bitmap.height;
  const ctx = canvas.getContext("2d")!;
  ctx.drawImage(bitmap, 0, 0);
  const image = ctx.getImageData(0, 0, bitmap.width, bitmap.height);
  const levels = new Uint8ClampedArray(bitmap.width * bitmap.height);
  for (let p = 0; p < levels.length; p++) {
    const level = image.data[p * 4];
    levels[p] = level;
    image.data.set(LUT.subarray(level * 4, level * 4 + 4), p * 4);
  }
  ctx.putImageData(image, 0, 0);
  return levels;
}

export class NeuronView {
  readonly element: HTMLDivElement;

  constructor() {
    this.element = el("div", { class: "neuron" });
  }

  /** Draw the panel; resolves when every activation map is painted, with the number painted. */
  async render(input: NeuronInput): Promise<number> {
    clear(this.element);
    const { data } = input;
    const cards = el("div", { class: "neuron-examples" });
    const pending: Array<Promise<boolean>> = [];
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
        ]),
        readout,
      ]);
      cards.appendChild(card);
      if (ex.activation_map === null) {
        mapBox.appendChild(el("div", { class: "note" }, ["no activation map logged for this feature map"]));
        continue;
      }
      mapBox.appendChild(canvas);
      pending.push(
        getRangedImage(ex.activation_map).then(
          ({ bitmap, range }) => {
            const levels = paintGreen(canvas, bitmap);
            const [lo, hi] = range ?? [0, 1];
            mapBox.appendChild(el("div", { class: "range" }, [range ? `range ${formatValue(lo)} … ${formatValue(hi)}` : "range not sent (grey levels 0…1)"]));
            canvas.addEventListener("mousemove", (ev) => {
              const r = canvas.getBoundingClientRect();
              const col = Math.min(canvas.width - 1, Math.floor(((ev.clientX - r.left) / r.width) * canvas.width));
              const row = Math.min(canvas.height - 1, Math.floor(((ev.clientY - r.top) / r.height) * canvas.height));
              readout.textContent = `(${row}, ${col}): activation ${formatValue(dequantise(levels[row * canvas.width + col], lo, hi))}`;
            });
            return true;
          },
          (err: Error) => {
            mapBox.replaceChildren(el("div", { class: "error" }, [`activation map: ${err.message}`]));
            return false;
          },
        ),
      );
    }
    const features = el("div", { class: "learned-features" });
    if (data.learned_features.length === 0) {
      features.appendChild(el("div", { class: "note" }, ["no learned features logged (log reference images with add_analysis to see them)"]));
    }
    for (const f of data.learned_features) {
      features.appendChild(el("figure", { class: "learned-feature" }, [
        el("img", { src: f.url, alt: `learned feature rank ${f.rank + 1}`, width: 72, height: 72 }),
        el("figcaption", {}, [`#${f.rank + 1}: ${formatValue(f.activation)}`]),
      ]));
    }
    this.element.append(
      el("h3", {}, [`Feature map ${data.channel} of ${data.layer}`]),
      el("div", { class: "legend-ramp" }, ["activation: ", el("span", { class: "ramp" }), " low → high"]),
      cards,
      el("h4", {}, ["Learned features (top-activating reference crops)"]),
      features,
    );
    const painted = await Promise.all(pending);
    return painted.filter(Boolean).length;
  }
}
