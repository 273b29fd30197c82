/**
 * The dashboard's view state in a URL hash, in TensorBoard's own hash format:
 * `#<tab>&key=value&key=value` (keys and values URI-encoded). Our keys start with
 * `aevis.` so TensorBoard's own keys in the same hash are kept untouched.
 */

export interface ViewState {
  run?: string;
  analysis?: string;
  method?: string;
  step?: number;
  /** Example indices of the datapaths compared in the river and the treemap. */
  examples?: number[];
  /** Gated-layer name whose treemap is open. */
  layer?: string;
  /** Channel of the open neuron panel (needs `layer`). */
  channel?: number;
  /** The pair (A, B) whose activation difference A - B fills the treemap cells. */
  diff?: [number, number];
  /** Ids of the expanded layer groups in the model graph. */
  expanded?: string[];
  /** Layer distance of the river and the chart: "l2" (paper) or "rms" (L2 / sqrt(C_l)). */
  distance?: "l2" | "rms";
  /** Pan and zoom of the network view: [k, x, y]. */
  view?: [number, number, number];
}

const PREFIX = "aevis.";

export interface ParsedHash {
  tab: string | null;
  entries: Array<[string, string]>;
}

/** Split `#tab&k=v&...` into the tab name and decoded key/value pairs (TensorBoard's rules). */
export function parseHash(hash: string): ParsedHash {
  const body = hash.startsWith("#") ? hash.slice(1) : hash;
  let tab: string | null = null;
  const entries: Array<[string, string]> = [];
  for (const part of body.split("&")) {
    if (part === "") continue;
    const pieces = part.split("=");
    if (pieces.length === 1) tab = safeDecode(pieces[0]);
    else if (pieces.length === 2) entries.push([safeDecode(pieces[0]), safeDecode(pieces[1])]);
  }
  return { tab, entries };
}

function safeDecode(text: string): string {
  try {
    return decodeURIComponent(text);
  } catch {
    return text;
  }
}

function parseIntList(text: string): number[] | undefined {
  if (text === "") return undefined;
  const values = text.split(",").map((t) => Number(t));
  return values.every((v) => Number.isInteger(v) && v >= 0) ? values : undefined;
}

function parseNonNegativeInt(text: string): number | undefined {
  const value = Number(text);
  return text !== "" && Number.isInteger(value) && value >= 0 ? value : undefined;
}

/** The view state stored in `hash`; malformed values are dropped, never thrown. */
export function readViewState(hash: string): ViewState {
  const state: ViewState = {};
  for (const [key, value] of parseHash(hash).entries) {
    if (!key.startsWith(PREFIX)) continue;
    switch (key.slice(PREFIX.length)) {
      case "run": state.run = value; break;
      case "analysis": state.analysis = value; break;
      case "method": state.method = value; break;
      case "step": state.step = parseNonNegativeInt(value); break;
      case "examples": state.examples = parseIntList(value); break;
      case "layer": state.layer = value; break;
      case "channel": state.channel = parseNonNegativeInt(value); break;
      case "diff": {
        const pair = parseIntList(value);
        if (pair && pair.length === 2) state.diff = [pair[0], pair[1]];
        break;
      }
      case "expanded": state.expanded = value === "" ? [] : value.split(","); break;
      case "distance": if (value === "l2" || value === "rms") state.distance = value; break;
      case "view": {
        const v = value.split(",").map(Number);
        if (v.length === 3 && v.every(Number.isFinite) && v[0] > 0) state.view = [v[0], v[1], v[2]];
        break;
      }
    }
  }
  for (const key of Object.keys(state) as Array<keyof ViewState>) {
    if (state[key] === undefined) delete state[key];
  }
  return state;
}

function serialise(state: ViewState): Array<[string, string]> {
  const out: Array<[string, string]> = [];
  const put = (key: string, value: string | undefined) => {
    if (value !== undefined) out.push([PREFIX + key, value]);
  };
  put("run", state.run);
  put("analysis", state.analysis);
  put("method", state.method);
  put("step", state.step === undefined ? undefined : String(state.step));
  put("examples", state.examples?.join(","));
  put("layer", state.layer);
  put("channel", state.channel === undefined ? undefined : String(state.channel));
  put("diff", state.diff?.join(","));
  put("expanded", state.expanded?.join(","));
  put("distance", state.distance);
  put("view", state.view?.map((v, i) => (i === 0 ? Number(v.toPrecision(4)) : Math.round(v))).join(","));
  return out;
}

/**
 * `hash` with our keys replaced by `state`; the tab and every other key stay as
 * they were. `defaultTab` is used when the hash names no tab.
 */
export function writeViewState(hash: string, state: ViewState, defaultTab: string): string {
  const parsed = parseHash(hash);
  const kept = parsed.entries.filter(([key]) => !key.startsWith(PREFIX));
  const parts = [encodeURIComponent(parsed.tab ?? defaultTab)];
  for (const [key, value] of [...kept, ...serialise(state)]) {
    parts.push(`${encodeURIComponent(key)}=${encodeURIComponent(value)}`);
  }
  return "#" + parts.join("&");
}
