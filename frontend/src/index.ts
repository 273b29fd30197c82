/**
 * Entry point TensorBoard loads in the plugin's iframe: `render()` builds the AEVis
 * dashboard into the iframe's document. The run list is asked for when this module is
 * evaluated, before `render()` builds the page.
 */

import { getJson } from "./api";
import { App } from "./app";
import { STYLES } from "./styles";
import type { RunsResponse } from "./types";

const runs = getJson<RunsResponse>("runs");
runs.catch(() => undefined); // App.start reports a failure; never an unhandled rejection

export async function render(): Promise<void> {
  performance.mark("aevis-start"); // the bundle is loaded and evaluated (bench/bench_first_paint.py)
  const style = document.createElement("style");
  style.textContent = STYLES;
  document.head.appendChild(style);
  const root = document.createElement("div");
  document.body.appendChild(root);
  await new App(root).start(runs);
}
