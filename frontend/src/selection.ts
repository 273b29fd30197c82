/**
 * Choosing what to show (pure): the run / analysis / method / step / datapaths a view
 * state asks for, repaired to valid choices with a message for each repair.
 */

import type { ViewState } from "./hashState";
import type { RunListing } from "./types";

/** One analysis name of a run: its methods and, per method, the logged steps (ascending). */
export interface AnalysisChoice {
  name: string;
  methods: string[];
  steps: Record<string, number[]>;
  /** Per method, the steps with a saved model; undefined when the server does not say. */
  stepsWithModel: Record<string, number[] | undefined>;
}

/** The run's (name, method) entries grouped by analysis name, in order of first appearance. */
export function groupAnalyses(run: RunListing): AnalysisChoice[] {
  const byName = new Map<string, AnalysisChoice>();
  for (const entry of run.analyses) {
    let choice = byName.get(entry.name);
    if (!choice) {
      choice = { name: entry.name, methods: [], steps: {}, stepsWithModel: {} };
      byName.set(entry.name, choice);
    }
    if (!choice.methods.includes(entry.method)) choice.methods.push(entry.method);
    choice.steps[entry.method] = [...new Set([...(choice.steps[entry.method] ?? []), ...entry.steps])].sort((a, b) => a - b);
    if (entry.steps_with_model) {
      choice.stepsWithModel[entry.method] = [...new Set([...(choice.stepsWithModel[entry.method] ?? []), ...entry.steps_with_model])].sort((a, b) => a - b);
    }
  }
  return [...byName.values()];
}

export interface Resolved {
  state: ViewState;
  /** What was asked for but does not exist, in words for the user. */
  warnings: string[];
}

/**
 * Valid run, analysis, method and step for `asked` (the rest of the state is kept).
 * Defaults: the first run with an analysis, its first analysis, the constrained
 * method when logged, the last step. `runs` must not be empty.
 */
export function resolveSelection(runs: RunListing[], asked: ViewState): Resolved {
  const state: ViewState = { ...asked };
  const warnings: string[] = [];
  let run = runs.find((r) => r.run === state.run);
  if (state.run !== undefined && !run) {
    warnings.push(`Run "${state.run}" has no AEVis data (it is not in this logdir, or it logged no add_analysis summaries); showing another run.`);
  }
  run = run ?? runs.find((r) => r.analyses.length > 0) ?? runs[0];
  if (state.run !== undefined && state.run !== run.run) dropBelow(state, "run");
  state.run = run.run;
  const analyses = groupAnalyses(run);
  if (analyses.length === 0) {
    dropBelow(state, "run");
    return { state, warnings };
  }
  let analysis = analyses.find((a) => a.name === state.analysis);
  if (state.analysis !== undefined && !analysis) warnings.push(`Analysis "${state.analysis}" is not in run "${run.run}"; showing "${analyses[0].name}".`);
  analysis = analysis ?? analyses[0];
  if (state.analysis !== undefined && state.analysis !== analysis.name) dropBelow(state, "analysis");
  state.analysis = analysis.name;
  if (state.method === undefined) {
    state.method = defaultMethod(analysis);
  } else if (!analysis.methods.includes(state.method)) {
    warnings.push(`Method "${state.method}" was not logged for "${analysis.name}"; showing ${defaultMethod(analysis)}.`);
    state.method = defaultMethod(analysis);
    delete state.layer;
    delete state.channel;
  }
  const steps = analysis.steps[state.method] ?? [];
  if (state.step === undefined || !steps.includes(state.step)) {
    if (state.step !== undefined) warnings.push(`Step ${state.step} was not logged for "${analysis.name}" (${state.method}); showing step ${steps[steps.length - 1]}.`);
    state.step = steps[steps.length - 1];
  }
  return { state, warnings };
}

function defaultMethod(analysis: AnalysisChoice): string {
  return analysis.methods.includes("constrained") ? "constrained" : analysis.methods[0];
}

const BELOW: Record<"run" | "analysis", Array<keyof ViewState>> = {
  run: ["analysis", "method", "step", "examples", "layer", "channel", "diff", "expanded", "view"],
  analysis: ["method", "step", "examples", "layer", "channel", "diff", "expanded", "view"],
};

function dropBelow(state: ViewState, level: "run" | "analysis"): void {
  for (const key of BELOW[level]) delete state[key];
}

/** At most this many datapaths in the river (the backend's limit). */
export const MAX_RIVER_DATAPATHS = 16;

/**
 * The datapaths to compare: the asked example indices that exist (two or more, in
 * the asked order), else the paper's triplet `story` (adversarial, source,
 * representative target, ascending) when given, else the first MAX_RIVER_DATAPATHS examples.
 */
export function resolveExamples(asked: number[] | undefined, available: number[], story: number[] | null = null): number[] {
  const known = new Set(available);
  const chosen = [...new Set((asked ?? []).filter((i) => known.has(i)))].slice(0, MAX_RIVER_DATAPATHS);
  if (chosen.length >= 2) return chosen;
  if (story && story.length === 3 && story.every((i) => known.has(i)) && new Set(story).size === 3) return [...story].sort((a, b) => a - b);
  return available.slice(0, MAX_RIVER_DATAPATHS);
}

/** The pair for the activation difference: the asked one when both are compared and distinct, else the first two. */
export function resolveDiff(asked: [number, number] | undefined, examples: number[]): [number, number] {
  if (asked && asked[0] !== asked[1] && examples.includes(asked[0]) && examples.includes(asked[1])) return asked;
  return [examples[0], examples[1] ?? examples[0]];
}
