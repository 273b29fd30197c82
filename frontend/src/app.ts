/**
 * The dashboard controller: selectors (run, analysis, method, step, datapaths), the
 * three levels (network, layer, neuron), view state in the URL hash, and plain
 * messages for the bad states (no runs, run without AEVis data, backend errors,
 * models too large to show expanded).
 */

import { ApiError, getJson, postJson, routeUrl } from "./api";
import { pathColors, ROLE_LABELS } from "./colors";
import { afterNextFrame, clear, el, select } from "./dom";
import { download, exportPng, exportSvg, fileStem } from "./exportView";
import { defaultExpanded, toggleGroup } from "./graphModel";
import { datapathLabel, shortNames } from "./labels";
import type { Transform } from "./panZoom";
import { followTheme } from "./theme";
import { readViewState, writeViewState, type ViewState } from "./hashState";
import { NetworkView } from "./networkView";
import { ContributionPanel } from "./contributionPanel";
import { NeuronView } from "./neuronView";
import { formatValue } from "./scales";
import { TreemapView } from "./treemapView";
import { groupAnalyses, resolveDiff, resolveExamples, resolveSelection, type AnalysisChoice } from "./selection";
import type {
  AnalysisManifest, ContributionData, ExampleManifest, GraphData, NeuronData, RiverData, RunListing, RunsResponse, TreemapData,
} from "./types";

/** Visible-node budget of the graph on first view; larger models start with groups collapsed. */
export const GRAPH_NODE_BUDGET = 80;
/** The treemap route compares at most this many datapaths. */
const TREEMAP_MAX_EXAMPLES = 5;
const TAB = "aevis";

type MessageKind = "error" | "warning" | "info";

/** The window whose URL carries the view state: TensorBoard's page when reachable, else our own. */
function hostWindow(): Window {
  try {
    if (window.parent !== window && window.parent.location.href) return window.parent;
  } catch {
    // a cross-origin parent: keep the state in the iframe's own URL
  }
  return window;
}

function describeError(err: unknown): string {
  if (err instanceof ApiError) return `The ${err.route} route answered${err.status ? ` ${err.status}` : ""}: ${err.message}`;
  return err instanceof Error ? err.message : String(err);
}

/** The gated layers as a plain chain, for analyses logged without a model graph. */
function chainGraph(layers: string[]): GraphData {
  return {
    nodes: layers.map((name, i) => ({ id: name, label: name, op: "call_module", group: null, gated_layer: i })),
    edges: layers.slice(1).map((name, i) => ({ source: layers[i], target: name })),
    groups: [],
  };
}

/** The pending answers of one analysis, keyed by the state that asked for them. */
interface AnalysisRequests {
  /** JSON of [analysisKey, asked examples]. */
  key: string;
  asked: number[] | undefined;
  manifest: Promise<AnalysisManifest>;
  graph: Promise<{ graph: GraphData | null; error: unknown }>;
  /** null: the asked examples did not fit; ask again with the repaired list. */
  river: Promise<RiverData | null>;
}

export class App {
  private state: ViewState;
  private runs: RunListing[] = [];
  private manifest: AnalysisManifest | null = null;
  /** analysisKey() of the loaded manifest. */
  private manifestKey = "";
  private graph: GraphData | null = null;
  private river: RiverData | null = null;
  private expanded = new Set<string>();
  /** Contribution scores shown as dotted fills in the treemap of `layer` (per channel). */
  private contribution: { key: string; layer: string; scores: number[]; label: string } | null = null;
  /** Set once the first river is drawn (the performance marks are made once). */
  private riverShown = false;
  /** Incremented per analysis load; stale answers are dropped. */
  private generation = 0;
  private readonly host = hostWindow();

  private readonly controls = el("div", { class: "controls" });
  private readonly messages = el("div", { class: "messages", role: "status" });
  private readonly networkPanel = el("section", { class: "panel network-panel", hidden: "" });
  private readonly treemapPanel = el("section", { class: "panel treemap-panel", hidden: "" });
  private readonly neuronPanel = el("section", { class: "panel neuron-panel", hidden: "" });
  private readonly networkView = new NetworkView();
  private readonly treemapView = new TreemapView();
  private readonly neuronView = new NeuronView();
  private readonly contributionSection = el("section", { class: "panel contribution-panel", hidden: "" });
  private readonly contributionPanel = new ContributionPanel();
  private readonly legend = el("div", { class: "legend" });
  private readonly summary = el("div", { class: "summary" });
  private readonly networkOptions = el("span", { class: "network-options" });
  /** Display names of gated layers and groups (distinctive end of the module path). */
  private names = new Map<string, string>();
  /** The river is drawn with the view from the URL once; later draws keep the current view. */
  private viewRestored = false;
  private viewTimer: ReturnType<typeof setTimeout> | null = null;
  private readonly treemapHead = el("div", { class: "panel-head" });

  constructor(root: HTMLElement) {
    this.state = readViewState(this.host.location.hash);
    root.classList.add("aevis");
    root.append(this.controls, this.messages, this.networkPanel, this.treemapPanel, this.neuronPanel, this.contributionSection);
    this.contributionSection.append(this.contributionPanel.element);
    const exportButtons = (what: () => SVGSVGElement | null, name: () => string) => [
      this.button("Export SVG", () => this.exportView(what, name, "svg")),
      this.button("Export PNG", () => this.exportView(what, name, "png")),
    ];
    this.networkPanel.append(
      el("div", { class: "panel-head" }, [
        el("h2", {}, ["Datapath river, Eq. 9 diff and model graph"]),
        this.networkOptions,
        el("span", { class: "spacer" }),
        this.button("Fit", () => this.networkView.fit()),
        this.button("+", () => this.networkView.zoomBy(1.4)),
        this.button("−", () => this.networkView.zoomBy(1 / 1.4)),
        ...exportButtons(() => this.networkView.snapshot(), () => fileStem([this.state.analysis ?? "", "network"])),
      ]),
      this.summary,
      this.legend,
      this.networkView.element,
    );
    this.treemapPanel.append(this.treemapHead, this.treemapView.element);
    this.neuronPanel.append(this.neuronView.element);
    this.host.addEventListener("hashchange", () => this.onExternalHashChange());
    followTheme(root, this.host);
  }

  /** Show the first view; `runs`: the run list's answer when already asked for (index.ts asks at module evaluation). */
  async start(runs: Promise<RunsResponse> = getJson<RunsResponse>("runs")): Promise<void> {
    // A link that names an analysis: ask for it together with the run list, not after it.
    const linked = this.state.run !== undefined && this.state.analysis !== undefined && this.state.method !== undefined
      && this.state.step !== undefined ? this.requestAnalysis() : null;
    try {
      const answer = await runs;
      this.runs = answer.runs ?? [];
      for (const warning of answer.warnings ?? []) this.message("warning", warning);
    } catch (err) {
      this.message("error", describeError(err));
      return;
    }
    performance.mark("aevis-runs");
    if (this.runs.length === 0) {
      await this.showNoRuns();
      return;
    }
    this.resolveSelection();
    await this.loadAnalysis(linked);
  }

  // ------------------------------------------------------------- messages
  /** Show `text` once: the same message already shown is returned, not repeated. */
  private message(kind: MessageKind, text: string): HTMLDivElement {
    for (const shown of this.messages.children) {
      if (shown.textContent === text && shown.classList.contains(kind)) return shown as HTMLDivElement;
    }
    const box = el("div", { class: `message ${kind}` }, [text]);
    this.messages.appendChild(box);
    return box;
  }

  private button(text: string, onClick: () => void): HTMLButtonElement {
    const b = el("button", { type: "button" }, [text]);
    b.addEventListener("click", onClick);
    return b;
  }

  /** TensorBoard's own run list (runs of every plugin), or [] when it cannot be read. */
  private async tensorboardRuns(): Promise<string[]> {
    try {
      const runs = await getJson<unknown>("../../runs");
      return Array.isArray(runs) ? runs.map(String) : [];
    } catch {
      return [];
    }
  }

  private async showNoRuns(): Promise<void> {
    const others = await this.tensorboardRuns();
    const how = "Log an analysis with summary_writers.add_analysis(writer, name, analysis, step), or run `aevis demo --logdir <logdir>`, then reload.";
    if (others.length === 0) this.message("info", `No runs with AEVis data in this logdir. ${how}`);
    else this.message("info", `No AEVis data: TensorBoard has ${others.length} run(s) (${others.slice(0, 8).join(", ")}${others.length > 8 ? ", …" : ""}) but none contains an AEVis analysis. ${how}`);
  }

  // ------------------------------------------------------------- selection
  private currentRun(): RunListing | undefined {
    return this.runs.find((r) => r.run === this.state.run);
  }

  private currentAnalysis(): AnalysisChoice | undefined {
    const run = this.currentRun();
    return run ? groupAnalyses(run).find((a) => a.name === this.state.analysis) : undefined;
  }

  /** Repair the state to valid choices, telling the user what was not found. */
  private resolveSelection(): void {
    const { state, warnings } = resolveSelection(this.runs, this.state);
    this.state = state;
    for (const warning of warnings) this.message("warning", warning);
  }

  private saveState(): void {
    const hash = writeViewState(this.host.location.hash, this.state, TAB);
    if (hash === this.host.location.hash) return;
    const loc = this.host.location;
    this.host.history.replaceState(this.host.history.state, "", `${loc.pathname}${loc.search}${hash}`);
  }

  private onExternalHashChange(): void {
    const next = readViewState(this.host.location.hash);
    if (JSON.stringify(next) === JSON.stringify(this.state)) return;
    this.state = next;
    clear(this.messages);
    this.resolveSelection();
    void this.loadAnalysis();
  }

  private change(patch: Partial<ViewState>, reset: Array<keyof ViewState>): void {
    Object.assign(this.state, patch);
    for (const key of reset) delete this.state[key];
    clear(this.messages);
    this.resolveSelection();
    void this.loadAnalysis();
  }

  private renderControls(): void {
    clear(this.controls);
    const run = this.currentRun();
    const analysis = this.currentAnalysis();
    const resetBelowRun: Array<keyof ViewState> = ["analysis", "method", "step", "examples", "layer", "channel", "diff", "expanded", "view"];
    this.controls.appendChild(select("Run", this.runs.map((r) => ({ value: r.run, text: r.analyses.length ? r.run : `${r.run} (no AEVis data)` })), this.state.run ?? "",
      (v) => this.change({ run: v }, resetBelowRun), "run"));
    if (!run || !analysis) return;
    // A new analysis keeps the method (resolveSelection says so when it has to change it).
    this.controls.appendChild(select("Analysis", groupAnalyses(run).map((a) => ({ value: a.name, text: a.name })), analysis.name,
      (v) => this.change({ analysis: v }, resetBelowRun.slice(2)), "analysis"));
    this.controls.appendChild(select("Method", analysis.methods.map((m) => ({ value: m, text: m === "dgr" ? "DGR (baseline)" : m })), this.state.method ?? "",
      (v) => this.change({ method: v }, ["step", "layer", "channel", "view"]), "method"));
    const steps = analysis.steps[this.state.method ?? ""] ?? [];
    if (steps.length > 1) {
      this.controls.appendChild(select("Step", steps.map((s) => ({ value: String(s), text: String(s) })), String(this.state.step),
        (v) => this.change({ step: Number(v) }, ["layer", "channel", "view"]), "step"));
    }
    if (this.manifest && this.manifestKey === this.analysisKey()) this.controls.appendChild(this.datapathPicker(this.manifest.examples));
  }

  private datapathPicker(examples: ExampleManifest[]): HTMLElement {
    const chosen = new Set(this.state.examples ?? []);
    const box = el("div", { class: "datapaths", role: "group", "aria-label": "datapaths to compare" });
    const colors = this.exampleColors();
    examples.forEach((e) => {
      const input = el("input", { type: "checkbox", name: "datapath", value: e.index });
      input.checked = chosen.has(e.index);
      input.addEventListener("change", () => {
        const next = examples.map((x) => x.index).filter((i) => (i === e.index ? input.checked : chosen.has(i)));
        if (next.length < 2) {
          input.checked = true;
          this.message("warning", "The river compares two or more datapaths: keep at least two selected.");
          return;
        }
        this.change({ examples: next }, ["diff"]);
      });
      box.appendChild(el("label", { title: ROLE_LABELS[e.role] ?? e.role }, [input, el("span", { class: "swatch", style: `background:${colors.get(e.index) ?? "#bdbdbd"}` }), datapathLabel(e.name, e.role)]));
    });
    return el("div", { class: "control" }, [el("span", {}, ["Datapaths"]), box]);
  }

  /** Identity of the analysis the state names (run, analysis, method, step). */
  private analysisKey(): string {
    return JSON.stringify([this.state.run, this.state.analysis, this.state.method, this.state.step]);
  }

  private analysisParams(): Record<string, string | number | undefined> {
    return { run: this.state.run, analysis: this.state.analysis, method: this.state.method, step: this.state.step };
  }

  // ------------------------------------------------------------- network level
  /** Ask for the three answers the river needs (manifest, graph, river), all at once. */
  private requestAnalysis(): AnalysisRequests {
    const params = this.analysisParams();
    const asked = this.state.examples;
    const key = JSON.stringify([this.analysisKey(), asked ?? null]);
    const manifest = getJson<AnalysisManifest>("analysis", params);
    const graph = getJson<GraphData>("graph", params).then(
      (answer) => ({ graph: answer, error: null }),
      (error: unknown) => ({ graph: null, error }),
    );
    // An example list from a link that does not fit this analysis is repaired and asked for again.
    const river = getJson<RiverData>("river", { ...params, examples: asked?.join(","), normalization: this.distance() }).catch((err: unknown) => {
      if (asked === undefined) throw err;
      return null;
    });
    // A request made for a link that turns out not to fit is dropped: never an unhandled rejection.
    manifest.catch(() => undefined);
    river.catch(() => undefined);
    return { key, asked, manifest, graph, river };
  }

  private async loadAnalysis(prefetched: AnalysisRequests | null = null): Promise<void> {
    const generation = ++this.generation;
    const run = this.currentRun();
    const wanted = JSON.stringify([this.analysisKey(), this.state.examples ?? null]);
    // Requests first: drawing the controls and writing the hash need no answer.
    const requests = run && this.currentAnalysis() ? (prefetched?.key === wanted ? prefetched : this.requestAnalysis()) : null;
    // Another choice within the same analysis (datapaths) keeps every panel in place: no jump of the page.
    const sameAnalysis = this.manifest !== null && this.manifestKey === this.analysisKey();
    this.renderControls();
    if (!sameAnalysis) {
      this.networkPanel.hidden = true;
      this.treemapPanel.hidden = true;
      this.neuronPanel.hidden = true;
      this.contributionSection.hidden = true;
      this.contributionPanel.hide();
    }
    // The hash is written once the answers are in (each write costs TensorBoard's page some ms).
    if (!run || !requests) {
      this.saveState();
      if (run) this.message("info", `Run "${run.run}" has no AEVis data: it logged no add_analysis summaries.`);
      return;
    }
    const params = this.analysisParams();
    const loading = sameAnalysis ? el("div") : this.message("info", "Loading the analysis…");
    let manifest: AnalysisManifest;
    let river: RiverData;
    let graph: GraphData | null;
    try {
      manifest = await requests.manifest;
      const dm = manifest.diverging_merging;
      const story = dm ? [dm.adversarial, dm.source, dm.target] : null;
      const examples = resolveExamples(requests.asked, manifest.examples.map((e) => e.index), story);
      const dropped = (requests.asked ?? []).filter((i) => !examples.includes(i));
      if (dropped.length) {
        this.message("warning", `Datapath${dropped.length > 1 ? "s" : ""} ${dropped.join(", ")} of the link ${dropped.length > 1 ? "are" : "is"} not in this analysis (examples 0..${manifest.examples.length - 1}); showing ${examples.join(", ")}.`);
      }
      if (requests.asked === undefined && story && manifest.examples.length > 3 && examples.length === 3) {
        this.message("info", `Showing the paper's triplet: the adversarial example, its source and the representative target (Sec. 6.2.1) of ${manifest.examples.filter((e) => e.role === "target").length} target images. Tick more under Datapaths to compare them.`);
      }
      const first = await requests.river;
      const same = first !== null && JSON.stringify(first.paths.map((p) => p.example).sort()) === JSON.stringify([...examples].sort())
        && (first.normalization ?? "l2") === this.distance();
      river = same ? first! : await getJson<RiverData>("river", { ...params, examples: examples.join(","), normalization: this.distance() });
      const answered = await requests.graph;
      graph = answered.graph;
      if (answered.error !== null && generation === this.generation) {
        const missing = answered.error instanceof ApiError && answered.error.status === 404;
        this.message(missing ? "info" : "warning", `${describeError(answered.error)} — the river is drawn along the gated layers as a chain instead.`);
      }
      this.state.examples = examples;
    } catch (err) {
      if (generation !== this.generation) return;
      loading.remove();
      this.saveState();
      this.message("error", describeError(err));
      return;
    }
    if (generation !== this.generation) return;
    loading.remove();
    for (const warning of manifest.warnings ?? []) this.message("warning", warning);
    this.manifest = manifest;
    this.manifestKey = this.analysisKey();
    this.state.diff = this.state.diff && resolveDiff(this.state.diff, this.state.examples!);
    this.renderControls();
    if (this.riverShown) this.saveState(); // the first river writes the hash once painted (below)
    if (manifest.examples.length < 2) {
      this.message("info", "This analysis has a single datapath; the river compares two or more. Its treemap is still available per layer.");
    }
    this.river = river;
    if ((river.normalization ?? "l2") !== this.distance()) {
      this.message("warning", "This server answers the river with the paper's L2 distance only; the RMS choice is not available here.");
    }
    this.graph = graph ?? chainGraph(manifest.layers.map((l) => l.name));
    this.names = shortNames([...manifest.layers.map((l) => l.name), ...this.graph.groups.map((g) => g.id)]);
    if (this.state.expanded) {
      const known = new Set(this.graph.groups.map((g) => g.id));
      this.expanded = new Set(this.state.expanded.filter((g) => known.has(g)));
    } else {
      this.expanded = defaultExpanded(this.graph, GRAPH_NODE_BUDGET);
    }
    if (this.graph.nodes.length > GRAPH_NODE_BUDGET && this.graph.groups.length > 0) {
      this.message("info", `Large model: ${this.graph.nodes.length} operations, so layer groups start collapsed. Use + on a group to expand it, the mini-map to move around, and the wheel to zoom.`);
    }
    this.renderSummary();
    this.networkPanel.hidden = false;
    this.viewRestored = false;
    if (!this.riverShown) performance.mark("aevis-data");
    this.drawNetwork();
    if (!this.riverShown) {
      // First river: its paths are in the DOM now; the second mark follows the frame that paints them.
      this.riverShown = true;
      performance.mark("aevis-river-drawn");
      afterNextFrame(() => {
        performance.mark("aevis-river-painted");
        this.saveState(); // writing TensorBoard's URL costs its page some ms: after the first paint
      });
    }
    if (this.state.layer) void this.loadTreemap();
  }

  /** The layer distance of the river and the chart: RMS unless the URL asks for the paper's L2. */
  private distance(): "l2" | "rms" {
    return this.state.distance ?? "rms";
  }

  private renderSummary(): void {
    const m = this.manifest!;
    const layerName = (l: number | null) => (l === null ? "none" : this.names.get(m.layers[l]?.name) ?? m.layers[l]?.name ?? String(l));
    const dm = m.diverging_merging;
    const parts = [`${m.layers.length} gated layers · method ${m.method} · threshold ${formatValue(m.threshold)} · river layout ${this.river!.layout === "rule" ? "rule (Sec. 5.2)" : "least squares"}`];
    if (dm) {
      parts.push(dm.detected ? `diverging at ${layerName(dm.diverging_layer)}, merging at ${layerName(dm.merging_layer)}` : "no diverging/merging pattern detected (Eq. 10)");
    }
    const preds = m.examples.filter((e) => (this.state.examples ?? []).includes(e.index))
      .map((e) => `${e.name}: ${e.class_name} (${formatValue(e.confidence)})${e.label_preserved ? "" : " — datapath does not keep the label"}`);
    clear(this.summary);
    this.summary.append(el("div", {}, [parts.join(" · ")]), el("div", {}, [`predictions: ${preds.join("; ")}`]));
    const provenance = m.params?.provenance;
    if (provenance && typeof provenance === "object") {
      const rows = Object.entries(provenance as Record<string, unknown>).map(([k, v]) => `${k}: ${String(v)}`);
      this.summary.appendChild(el("div", { class: "provenance" }, [`how the examples were chosen — ${rows.join(" · ")}`]));
    }
    if (!m.has_model) this.summary.appendChild(el("div", { class: "note no-model" }, [this.noModelText()]));
  }

  /** Why contribution analysis is unavailable here, and where it is available. */
  private noModelText(): string {
    const withModel = this.currentAnalysis()?.stepsWithModel[this.state.method ?? ""];
    const base = `Step ${this.state.step} saved no model, so contribution analysis is unavailable here`;
    if (withModel === undefined) return `${base} (log the analysis with model=... to enable it).`;
    if (withModel.length === 0) return `${base}; no step of this analysis saved one (log it with model=...).`;
    return `${base}; steps with a saved model: ${withModel.join(", ")}.`;
  }

  private drawNetwork(keepLayer: number | null = null): void {
    const river = this.river!;
    const manifest = this.manifest!;
    clear(this.legend);
    const colors = this.exampleColors();
    river.paths.forEach((p) => {
      this.legend.appendChild(el("span", { class: "item", "data-example": p.example }, [
        el("span", { class: "swatch", style: `background:${colors.get(p.example) ?? "#757575"};width:22px` }), datapathLabel(p.name, p.role),
      ]));
    });
    const unit = river.normalization === "rms" ? "RMS gate distance (L2 / √C_l)" : "L2 gate distance (paper)";
    this.legend.append(
      el("span", { class: "item span-key" }, [el("span", { class: "span-swatch" }), "diverging → merging span"]),
      el("span", { class: "item marker-key diverging" }, ["▲ diverging"]),
      el("span", { class: "item marker-key merging" }, ["▲ merging"]),
      el("span", { class: "item note" }, [`river: vertical gap between curves = ${unit} between datapaths at that layer (wider curves lie under thinner ones). Chart: Eq. 9 diff, last r layers shaded. Hover a layer for values, click it for its feature maps.`]),
    );
    clear(this.networkOptions);
    this.networkOptions.appendChild(select("Layer distance", [
      { value: "rms", text: "RMS: L2 / √channels (compares layers)" },
      { value: "l2", text: "L2 (paper, grows with width)" },
    ], this.distance(), (v) => {
      this.state.distance = v as "l2" | "rms";
      void this.reloadRiver();
    }, "distance"));
    const restore = !this.viewRestored && this.state.view ? { k: this.state.view[0], x: this.state.view[1], y: this.state.view[2] } : null;
    const keep = this.viewRestored && keepLayer === null ? this.networkView.view() : null;
    this.viewRestored = true;
    const analysisTitle = `${this.state.analysis ?? ""} — ${manifest.method}, step ${this.state.step} (${river.normalization === "rms" ? "RMS" : "L2"} distance)`;
    this.networkView.render({
      graph: this.graph!,
      layerNames: manifest.layers.map((l) => l.name),
      shortNames: this.names,
      river,
      detection: manifest.diverging_merging ?? null,
      colors,
      expanded: this.expanded,
      selectedLayer: this.state.layer ?? null,
      title: analysisTitle,
      onToggleGroup: (group) => {
        const inGroup = this.graph!.groups.find((g) => g.id === group)?.gated_layers ?? [];
        this.expanded = toggleGroup(this.graph!, this.expanded, group);
        this.state.expanded = [...this.expanded].sort();
        this.saveState();
        this.drawNetwork(inGroup.length ? inGroup[0] : null);
      },
      onOpenLayer: (index) => {
        this.state.layer = manifest.layers[index].name;
        delete this.state.channel;
        this.saveState();
        this.drawNetwork();
        void this.loadTreemap();
      },
      onViewChange: (t) => this.rememberView(t),
    }, restore ?? keep, keepLayer);
  }

  /** Keep the network view's pan and zoom in the URL (written once the user pauses). */
  private rememberView(t: Transform): void {
    this.state.view = [t.k, t.x, t.y];
    if (this.viewTimer !== null) clearTimeout(this.viewTimer);
    this.viewTimer = setTimeout(() => {
      this.viewTimer = null;
      this.saveState();
    }, 300);
  }

  /** Ask for the river again (another layer distance) and redraw it in place. */
  private async reloadRiver(): Promise<void> {
    const generation = this.generation;
    try {
      const river = await getJson<RiverData>("river", { ...this.analysisParams(), examples: (this.state.examples ?? []).join(","), normalization: this.distance() });
      if (generation !== this.generation) return;
      this.river = river;
    } catch (err) {
      this.message("error", describeError(err));
      return;
    }
    this.saveState();
    this.drawNetwork();
  }

  // ------------------------------------------------------------- layer level
  private exampleNames(): Map<number, string> {
    return new Map((this.manifest?.examples ?? []).map((e) => [e.index, e.name]));
  }

  /** Colour of each compared datapath, as in the river (role colour, ranked within the role). */
  private exampleColors(): Map<number, string> {
    const examples = this.manifest?.examples ?? [];
    const chosen = examples.filter((e) => (this.state.examples ?? []).includes(e.index));
    const colors = pathColors(chosen.map((e) => e.role));
    return new Map(chosen.map((e, k) => [e.index, colors[k]]));
  }

  private async loadTreemap(): Promise<void> {
    const generation = this.generation;
    const layer = this.state.layer!;
    const manifest = this.manifest!;
    const layerIndex = manifest.layers.findIndex((l) => l.name === layer);
    this.treemapPanel.hidden = false;
    clear(this.treemapHead);
    if (layerIndex < 0) {
      this.treemapView.element.replaceChildren(el("div", { class: "message error" }, [`Layer "${layer}" is not a gated layer of this analysis.`]));
      return;
    }
    const examples = (this.state.examples ?? []).slice(0, TREEMAP_MAX_EXAMPLES);
    const diff = resolveDiff(this.state.diff, examples);
    const names = this.exampleNames();
    const info = manifest.layers[layerIndex];
    const diffOptions = examples.map((i) => ({ value: String(i), text: names.get(i) ?? `#${i}` }));
    this.treemapHead.append(
      el("h2", {}, [`Feature maps of ${layer}`]),
      el("span", { class: "note" }, [`${info.channels} channels, ${info.height}×${info.width}`]),
      select("Difference A", diffOptions, String(diff[0]), (v) => this.setDiff([Number(v), diff[1]]), "diff-a"),
      select("minus B", diffOptions, String(diff[1]), (v) => this.setDiff([diff[0], Number(v)]), "diff-b"),
      this.manifest!.has_model
        ? this.contributionRunner("Contribution to prediction", () => ({ body: { target: "prediction", earlier_layer: layer }, label: "contribution to the prediction" })).element
        : el("span", { class: "note" }, [this.noModelText()]),
      el("span", { class: "spacer" }),
      this.button("Export SVG", () => this.exportView(() => this.treemapView.snapshot(this.treemapTitle(layer, diff)), () => fileStem([this.state.analysis ?? "", layer, "treemap"]), "svg")),
      this.button("Export PNG", () => this.exportView(() => this.treemapView.snapshot(this.treemapTitle(layer, diff)), () => fileStem([this.state.analysis ?? "", layer, "treemap"]), "png")),
      this.button("Close", () => {
        delete this.state.layer;
        delete this.state.channel;
        this.saveState();
        this.treemapPanel.hidden = true;
        this.neuronPanel.hidden = true;
        this.drawNetwork();
      }),
    );
    if (this.treemapNotice) {
      this.treemapHead.appendChild(el("div", { class: "message warning treemap-notice" }, [this.treemapNotice]));
      this.treemapNotice = null;
    }
    if ((this.state.examples ?? []).length > TREEMAP_MAX_EXAMPLES) {
      this.treemapHead.appendChild(el("div", { class: "note" }, [`The treemap compares the first ${TREEMAP_MAX_EXAMPLES} chosen datapaths.`]));
    }
    const width = Math.max(360, Math.min(900, Math.floor(this.treemapPanel.getBoundingClientRect().width - 30) || 600));
    // The old treemap stays while the new one loads (no jump of the page).
    if (!this.treemapView.element.firstChild) this.treemapView.element.append(el("div", { class: "note" }, ["Loading the treemap…"]));
    let data: TreemapData;
    try {
      data = await getJson<TreemapData>("treemap", {
        ...this.analysisParams(), layer, examples: examples.join(","), diff: diff.join(","), width, height: 360,
      });
    } catch (err) {
      if (generation !== this.generation || this.state.layer !== layer) return;
      this.treemapView.element.replaceChildren(el("div", { class: "message error" }, [describeError(err)]));
      return;
    }
    if (generation !== this.generation || this.state.layer !== layer) return;
    const contribution = this.contribution && this.contribution.key === this.analysisKey() && this.contribution.layer === layer ? this.contribution : null;
    if (contribution) data.cells = data.cells.map((c) => ({ ...c, contribution: contribution.scores[c.channel] ?? null }));
    this.treemapView.render({
      data, names, colors: this.exampleColors(), diff, selectedChannel: this.state.channel ?? null,
      contributionLabel: contribution?.label ?? null,
      onOpenChannel: (channel) => {
        this.state.channel = channel;
        this.saveState();
        void this.loadTreemap();
      },
    });
    if (this.state.channel !== undefined) void this.loadNeuron();
    else this.neuronPanel.hidden = true;
  }

  private treemapTitle(layer: string, diff: [number, number]): string {
    const names = this.exampleNames();
    return `${this.state.analysis ?? ""} — feature maps of ${layer} (${this.state.method}, step ${this.state.step}); fill: ${names.get(diff[0]) ?? diff[0]} − ${names.get(diff[1]) ?? diff[1]}`;
  }

  /** A refusal shown once in the treemap's head, next to the menus that caused it. */
  private treemapNotice: string | null = null;

  private setDiff(diff: [number, number]): void {
    if (diff[0] === diff[1]) {
      // Refused, never silently reset: the menus and the URL keep the last valid pair.
      this.treemapNotice = "A − B needs two different datapaths: choose another B (or A). The treemap keeps the last valid pair.";
      void this.loadTreemap();
      return;
    }
    this.state.diff = diff;
    this.saveState();
    void this.loadTreemap();
  }

  // ------------------------------------------------------------- neuron level
  private async loadNeuron(): Promise<void> {
    const generation = this.generation;
    const layer = this.state.layer!;
    const channel = this.state.channel!;
    this.neuronPanel.hidden = false;
    // The shown feature map stays until the next one is ready (no jump of the page).
    if (!this.neuronView.element.firstChild) this.neuronView.element.append(el("div", { class: "note" }, [`Loading feature map ${channel}…`]));
    let data: NeuronData;
    try {
      data = await getJson<NeuronData>("neuron", { ...this.analysisParams(), layer, channel });
    } catch (err) {
      if (generation !== this.generation) return;
      this.neuronView.element.replaceChildren(el("div", { class: "message error" }, [describeError(err)]));
      return;
    }
    if (generation !== this.generation || this.state.layer !== layer || this.state.channel !== channel) return;
    const colors = this.exampleColors();
    const title = `${this.state.analysis ?? ""} — feature map ${channel} of ${layer} (${this.state.method}, step ${this.state.step})`;
    const exportButton = this.button("Export PNG", () => void this.neuronView.exportPng(title).then((blob) => {
      if (blob) download(blob, `${fileStem([this.state.analysis ?? "", layer, String(channel), "neuron"])}.png`);
      else this.message("warning", "Nothing to export yet: the feature map is not drawn.");
    }));
    exportButton.classList.add("neuron-export");
    const tracer = this.contributionTracer(layer, channel);
    await this.neuronView.render({
      data,
      actions: el("div", { class: "neuron-actions" }, [tracer.element, exportButton]),
      onArea: () => tracer.run?.(),
      aside: this.contributionPanel.element,
      names: this.exampleNames(),
      colors,
      imageUrl: (example) => routeUrl("image", { ...this.analysisParams(), example }),
    });
  }

  // ------------------------------------------------------------- contribution (paper Sec. 5.4)
  /** "preview": a quadratic answer first (about a second), then refined by SGD (the accurate one). */
  private mode = "preview";
  /** The examples a contribution is computed for; null: the default (the adversarial datapath alone). */
  private contributionExamples: number[] | null = null;

  private contributionMode(): HTMLElement {
    return select("Contribution mode", [
      { value: "preview", text: "quadratic preview, then SGD" },
      { value: "sgd", text: "SGD (accurate)" },
      { value: "quadratic", text: "quadratic (fast)" },
    ], this.mode, (v) => {
      this.mode = v;
      for (const other of document.querySelectorAll<HTMLSelectElement>('select[name="contribution-mode"]')) other.value = v;
    }, "contribution-mode");
  }

  /** The examples to compute a contribution for: the user's choice, else the first adversarial datapath compared. */
  private contributionFor(): number[] {
    const compared = this.state.examples ?? [];
    const chosen = (this.contributionExamples ?? []).filter((i) => compared.includes(i));
    if (chosen.length) return chosen;
    const adversarial = compared.filter((i) => this.manifest?.examples.find((e) => e.index === i)?.role === "adversarial");
    return (adversarial.length ? adversarial : compared).slice(0, 1);
  }

  /** Checkboxes choosing the examples of a contribution (one alone possible). */
  private contributionChooser(): HTMLElement {
    const chosen = new Set(this.contributionFor());
    const names = this.exampleNames();
    const box = el("span", { class: "contribution-examples", role: "group", "aria-label": "examples the contribution is computed for" });
    for (const i of (this.state.examples ?? []).slice(0, TREEMAP_MAX_EXAMPLES)) {
      const input = el("input", { type: "checkbox", name: "contribution-example", value: i });
      input.checked = chosen.has(i);
      input.addEventListener("change", () => {
        const next = [...box.querySelectorAll<HTMLInputElement>("input:checked")].map((x) => Number(x.value));
        if (next.length === 0) {
          input.checked = true;
          return;
        }
        this.contributionExamples = next;
        for (const other of document.querySelectorAll<HTMLInputElement>('input[name="contribution-example"]')) other.checked = next.includes(Number(other.value));
      });
      box.appendChild(el("label", {}, [input, names.get(i) ?? `#${i}`]));
    }
    return el("span", { class: "control" }, [el("span", {}, ["Compute for"]), box]);
  }

  /** A run control: [examples] [mode] [button] [progress]; `request()` says what to compute. */
  private contributionRunner(text: string, request: () => { body: Record<string, unknown>; label: string }): { element: HTMLElement; run: () => void } {
    const status = el("span", { class: "contribution-status note", role: "status" });
    const button = el("button", { type: "button", class: "contribution-run" }, [text]);
    const run = () => {
      if (button.disabled) return;
      const { body, label } = request();
      void this.computeContribution(body, label, button, status);
    };
    button.addEventListener("click", run);
    return { element: el("span", { class: "contribution-controls" }, [this.contributionChooser(), this.contributionMode(), button, status]), run };
  }

  /** "Trace from layer [earlier]": contributions of an earlier layer to this feature map or its brushed area (runs on mouse-up). */
  private contributionTracer(layer: string, channel: number): { element: HTMLElement; run: (() => void) | null } {
    const manifest = this.manifest!;
    const index = manifest.layers.findIndex((l) => l.name === layer);
    if (!manifest.has_model) return { element: el("div", { class: "note" }, [this.noModelText()]), run: null };
    if (index <= 0) return { element: el("div", { class: "note" }, ["the first gated layer has no earlier gated layer to trace contributions from"]), run: null };
    const earlier = manifest.layers.slice(0, index).map((l) => ({ value: l.name, text: this.names.get(l.name) ?? l.name }));
    let from = earlier[earlier.length - 1].value;
    const runner = this.contributionRunner("Trace", () => {
      const chosen = this.neuronView.area();
      const where = chosen ? ` (area rows ${chosen.area[0]}–${chosen.area[2] - 1}, columns ${chosen.area[1]}–${chosen.area[3] - 1})` : "";
      return {
        body: { target: "feature_map", target_layer: layer, channel, earlier_layer: from, ...(chosen ? { area: chosen.area, area_grid: chosen.grid } : {}) },
        label: `contribution to feature map ${channel} of ${layer}${where}`,
      };
    });
    return {
      element: el("div", { class: "contribution-tracer" }, [
        select("Trace contributions from", earlier, from, (v) => (from = v), "earlier-layer"),
        runner.element,
        el("span", { class: "note" }, ["brush an area on a map: tracing starts on mouse-up"]),
      ]),
      run: runner.run,
    };
  }

  /**
   * POST the contribution request (in "preview" mode: quadratic, shown, then SGD, shown);
   * progress next to `button` (disabled meanwhile); the ranked result in its panel.
   */
  private async computeContribution(request: Record<string, unknown>, label: string, button: HTMLButtonElement, status: HTMLElement): Promise<void> {
    const key = this.analysisKey();
    const examples = this.contributionFor();
    const modes = this.mode === "preview" ? ["quadratic", "sgd"] : [this.mode];
    button.disabled = true;
    const started = performance.now();
    let doing = "";
    const show = () => (status.textContent = `${doing} ${((performance.now() - started) / 1000).toFixed(0)} s`);
    const tick = setInterval(show, 1000);
    try {
      for (const [k, mode] of modes.entries()) {
        doing = modes.length > 1 && k > 0 ? "Preview shown; refining with SGD…" : `Computing (${mode})…`;
        show();
        let answer: ContributionData;
        try {
          answer = await postJson<ContributionData>("contribution", { ...this.analysisParams(), ...request, examples, mode });
        } catch (err) {
          status.textContent = "";
          this.message("error", describeError(err));
          return;
        }
        if (key !== this.analysisKey()) return;
        this.showContribution(answer, examples, modes.length > 1 && k === 0 ? `${label} — quadratic preview, SGD refining…` : label);
      }
      status.textContent = `done in ${((performance.now() - started) / 1000).toFixed(1)} s`;
    } finally {
      clearInterval(tick);
      button.disabled = false;
    }
  }

  /** Show a contribution answer: the ranked panel, and the dotted fills of its layer's treemap. */
  private showContribution(answer: ContributionData, examples: number[], label: string): void {
    const key = this.analysisKey();
    for (const warning of answer.warnings ?? []) this.message("warning", warning);
    answer.examples = answer.examples ?? examples;
    this.contribution = { key, layer: answer.earlier_layer, scores: answer.scores, label: `${label}, ${answer.mode}, ${formatValue(answer.seconds)} s` };
    const params = this.analysisParams();
    const earlier = answer.earlier_layer;
    // Beside the brushed maps when a feature map is open, else in its own panel.
    const beside = !this.neuronPanel.hidden && this.neuronView.element.contains(this.contributionPanel.element);
    if (!beside) this.contributionSection.append(this.contributionPanel.element);
    this.contributionSection.hidden = beside;
    this.contributionPanel.render({
      answer, label, names: this.exampleNames(), colors: this.exampleColors(),
      activationUrl: (channel, example) => routeUrl("activation_map", { ...params, layer: earlier, channel, example }),
      learnedUrl: (channel) => routeUrl("learned_feature", { ...params, layer: earlier, channel, rank: 0 }),
      onOpen: (channel) => {
        this.state.layer = earlier;
        this.state.channel = channel;
        this.saveState();
        this.drawNetwork();
        void this.loadTreemap();
      },
    });
    // The earlier layer's treemap shows the scores as dotted fills when it is open.
    if (this.state.layer === earlier) void this.loadTreemap();
  }

  // ------------------------------------------------------------- export
  private async exportView(what: () => SVGSVGElement | null, name: () => string, format: "svg" | "png"): Promise<void> {
    const svg = what();
    if (!svg) {
      this.message("warning", "Nothing to export yet: the view is not drawn.");
      return;
    }
    try {
      if (format === "svg") await exportSvg(svg, name());
      else await exportPng(svg, name());
    } catch (err) {
      this.message("error", `Export failed: ${describeError(err)}`);
    }
  }
}
