/**
 * Entry point TensorBoard loads in the plugin's iframe: `render()` builds the AEVis
 * dashboard into the iframe's document.
 */

import { App } from "./app";
import { STYLES } from "./styles";

export async function render(): Promise<void> {
  performance.mark("aevis-start"); // the bundle is loaded and evaluated (bench/bench_first_paint.py)
  const style = document.createElement("style");
  style.textContent = STYLES;
  document.head.appendChild(style);
  const root = document.createElement("div");
  document.body.appendChild(root);
  await new App(root).start();
}
