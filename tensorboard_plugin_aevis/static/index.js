// src/scales.ts
function clamp(value, lo, hi) {
  return Math.min(hi, Math.max(lo, value));
}
var GREEN_STOPS = [
  [247, 252, 245],
  [199, 233, 192],
  [116, 196, 118],
  [35, 139, 69],
  [0, 68, 27]
];
function greenRamp(t) {
  const x = clamp(Number.isFinite(t) ? t : 0, 0, 1) * (GREEN_STOPS.length - 1);
  const i = Math.min(Math.floor(x), GREEN_STOPS.length - 2);
  const f = x - i;
  const a = GREEN_STOPS[i];
  const b = GREEN_STOPS[i + 1];
  return [0, 1, 2].map((c) => Math.round(a[c] + (b[c] - a[c]) * f));
}
function rgbCss([r, g, b]) {
  return `rgb(${r}, ${g}, ${b})`;
}
function greenLookupTable() {
  const table = new Uint8ClampedArray(256 * 4);
  for (let level = 0; level < 256; level++) {
    const [r, g, b] = greenRamp(level / 255);
    table.set([r, g, b, 255], level * 4);
  }
  return table;
}
function dequantise(level, min, max) {
  return min + level / 255 * (max - min);
}
function parseRangeHeader(header) {
  if (header === null) return null;
  const parts = header.split(",").map((p) => Number(p.trim()));
  if (parts.length !== 2 || !parts.every(Number.isFinite) || parts[1] < parts[0]) return null;
  return [parts[0], parts[1]];
}
function formatValue(value) {
  if (value === null || value === void 0 || Number.isNaN(value)) return "n/a";
  if (value === 0) return "0";
  const magnitude = Math.abs(value);
  if (magnitude >= 1e4 || magnitude < 1e-3) return value.toExponential(2);
  return String(Number(value.toPrecision(3)));
}

// src/api.ts
var ApiError = class extends Error {
  constructor(route, status, message) {
    super(message);
    this.route = route;
    this.status = status;
    this.name = "ApiError";
  }
};
function routeUrl(route, params = {}) {
  const query = new URLSearchParams();
  for (const [key, value] of Object.entries(params)) if (value !== void 0) query.set(key, String(value));
  const text = query.toString();
  return text ? `${route}?${text}` : route;
}
async function errorFrom(route, response) {
  let message = `${response.status} ${response.statusText}`.trim();
  try {
    const body = await response.text();
    try {
      const parsed = JSON.parse(body);
      if (parsed && typeof parsed.error === "string") message = parsed.error;
      else if (body) message = body.slice(0, 500);
    } catch {
      if (body) message = body.slice(0, 500);
    }
  } catch {
  }
  return new ApiError(route, response.status, message);
}
async function request(route, url, init = {}) {
  let response;
  try {
    response = await fetch(url, { credentials: "same-origin", ...init });
  } catch (err) {
    throw new ApiError(route, 0, `TensorBoard did not answer (${String(err)}); is it still running?`);
  }
  if (!response.ok) throw await errorFrom(route, response);
  return response;
}
async function getJson(route, params = {}) {
  const response = await request(route, routeUrl(route, params));
  try {
    return await response.json();
  } catch {
    throw new ApiError(route, response.status, `the ${route} route answered something that is not JSON`);
  }
}
async function postJson(route, body) {
  const response = await request(route, route, {
    method: "POST",
    headers: { "Content-Type": "application/json" },
    body: JSON.stringify(body)
  });
  try {
    return await response.json();
  } catch {
    throw new ApiError(route, response.status, `the ${route} route answered something that is not JSON`);
  }
}
async function getRangedImage(url) {
  const response = await request(url.split("?")[0], url);
  const range = parseRangeHeader(response.headers.get("X-AEVis-Range"));
  const bitmap = await createImageBitmap(await response.blob());
  return { bitmap, range };
}

// src/colors.ts
var ROLE_COLORS = {
  source: "#1f77b4",
  adversarial: "#ff7f0e",
  target: "#9467bd"
};
var ROLE_LABELS = {
  source: "source (normal)",
  adversarial: "adversarial",
  target: "target (normal)"
};
function hexToRgb(hex) {
  const n = parseInt(hex.slice(1), 16);
  return [n >> 16 & 255, n >> 8 & 255, n & 255];
}
function rgbToHex([r, g, b]) {
  return "#" + [r, g, b].map((c) => Math.round(c).toString(16).padStart(2, "0")).join("");
}
function pathColor(role, rank) {
  const base = hexToRgb(ROLE_COLORS[role] ?? "#7f7f7f");
  if (rank <= 0) return rgbToHex(base);
  const step = Math.ceil(rank / 2) * 0.25;
  const towards = rank % 2 === 1 ? [0, 0, 0] : [255, 255, 255];
  const f = Math.min(step, 0.75);
  return rgbToHex([0, 1, 2].map((c) => base[c] + (towards[c] - base[c]) * f));
}
function pathColors(roles) {
  const seen = {};
  return roles.map((role) => {
    const rank = seen[role] ?? 0;
    seen[role] = rank + 1;
    return pathColor(role, rank);
  });
}

// src/dom.ts
var SVG_NS = "http://www.w3.org/2000/svg";
function append(parent, children) {
  for (const child of children) {
    if (child === null || child === void 0 || child === false) continue;
    parent.appendChild(typeof child === "string" ? document.createTextNode(child) : child);
  }
}
function el(tag, attrs = {}, children = []) {
  const node = document.createElement(tag);
  for (const [key, value] of Object.entries(attrs)) node.setAttribute(key, String(value));
  append(node, children);
  return node;
}
function svgEl(tag, attrs = {}, children = []) {
  const node = document.createElementNS(SVG_NS, tag);
  for (const [key, value] of Object.entries(attrs)) node.setAttribute(key, String(value));
  append(node, children);
  return node;
}
function svgTitle(text) {
  return svgEl("title", {}, [text]);
}
function clear(node) {
  while (node.firstChild) node.removeChild(node.firstChild);
}
function select(label, options, value, onChange, name) {
  const control = el("select", { name, "aria-label": label });
  for (const o of options) {
    const option = el("option", { value: o.value }, [o.text]);
    if (o.value === value) option.selected = true;
    control.appendChild(option);
  }
  control.addEventListener("change", () => onChange(control.value));
  return el("label", { class: "control" }, [el("span", {}, [label]), control]);
}
function afterNextFrame(callback) {
  requestAnimationFrame(() => setTimeout(callback, 0));
}

// src/exportView.ts
var SVG_NS2 = "http://www.w3.org/2000/svg";
function svgMarkup(svg) {
  const copy = svg.cloneNode(true);
  copy.setAttribute("xmlns", SVG_NS2);
  copy.setAttribute("version", "1.1");
  return '<?xml version="1.0" encoding="UTF-8"?>\n' + new XMLSerializer().serializeToString(copy);
}
function svgSize(svg) {
  const w = Number(svg.getAttribute("width"));
  const h = Number(svg.getAttribute("height"));
  if (!(w > 0 && h > 0)) throw new Error("the view has no pixel size to export; draw it first");
  return [w, h];
}
async function svgToPng(svg, scale = 2) {
  const [w, h] = svgSize(svg);
  const url = URL.createObjectURL(new Blob([svgMarkup(svg)], { type: "image/svg+xml" }));
  try {
    const img = new Image();
    img.src = url;
    await img.decode();
    const canvas = document.createElement("canvas");
    canvas.width = Math.round(w * scale);
    canvas.height = Math.round(h * scale);
    const ctx = canvas.getContext("2d");
    ctx.fillStyle = "#ffffff";
    ctx.fillRect(0, 0, canvas.width, canvas.height);
    ctx.scale(scale, scale);
    ctx.drawImage(img, 0, 0, w, h);
    return await new Promise(
      (resolve, reject) => canvas.toBlob((b) => b ? resolve(b) : reject(new Error("the browser could not encode the PNG")), "image/png")
    );
  } finally {
    URL.revokeObjectURL(url);
  }
}
function download(blob, filename) {
  const url = URL.createObjectURL(blob);
  const a = document.createElement("a");
  a.href = url;
  a.download = filename;
  document.body.appendChild(a);
  a.click();
  a.remove();
  setTimeout(() => URL.revokeObjectURL(url), 1e4);
}
async function exportSvg(svg, basename) {
  svgSize(svg);
  download(new Blob([svgMarkup(svg)], { type: "image/svg+xml" }), `${basename}.svg`);
}
async function exportPng(svg, basename) {
  download(await svgToPng(svg), `${basename}.png`);
}
function fileStem(parts) {
  return parts.join("_").replace(/[^A-Za-z0-9._-]+/g, "-").replace(/^[-.]+|-+$/g, "").slice(0, 120) || "aevis";
}

// src/graphModel.ts
var parentMaps = /* @__PURE__ */ new WeakMap();
function parentsOf(graph) {
  let parents = parentMaps.get(graph);
  if (!parents) {
    parents = new Map(graph.groups.map((g) => [g.id, g.parent]));
    parentMaps.set(graph, parents);
  }
  return parents;
}
function groupChain(graph, group) {
  const parents = parentsOf(graph);
  const chain = [];
  const seen = /* @__PURE__ */ new Set();
  let current = group;
  while (current !== null && current !== void 0 && parents.has(current) && !seen.has(current)) {
    seen.add(current);
    chain.push(current);
    current = parents.get(current) ?? null;
  }
  return chain.reverse();
}
function representative(chain, nodeId, expanded) {
  for (const group of chain) {
    if (!expanded.has(group)) return group;
  }
  return nodeId;
}
function visibleGraph(graph, expanded) {
  const groupsById = new Map(graph.groups.map((g) => [g.id, g]));
  const repOf = /* @__PURE__ */ new Map();
  const nodes = /* @__PURE__ */ new Map();
  const gatedAnchor = /* @__PURE__ */ new Map();
  for (const node of graph.nodes) {
    const rep = representative(groupChain(graph, node.group), node.id, expanded);
    repOf.set(node.id, rep);
    let visible = nodes.get(rep);
    if (!visible) {
      const group = groupsById.get(rep);
      visible = group ? { id: rep, kind: "group", label: group.id, gatedLayers: [], size: 0 } : { id: rep, kind: "op", label: node.module_type || node.label, gatedLayers: [], size: 0 };
      nodes.set(rep, visible);
    }
    visible.size += 1;
    if (node.gated_layer !== null && node.gated_layer !== void 0) {
      visible.gatedLayers.push(node.gated_layer);
      gatedAnchor.set(node.gated_layer, rep);
    }
  }
  for (const node of nodes.values()) node.gatedLayers.sort((a, b) => a - b);
  const edgeKeys = /* @__PURE__ */ new Set();
  const edges = [];
  for (const edge of graph.edges) {
    const source = repOf.get(edge.source);
    const target = repOf.get(edge.target);
    if (source === void 0 || target === void 0 || source === target) continue;
    const key = JSON.stringify([source, target]);
    if (edgeKeys.has(key)) continue;
    edgeKeys.add(key);
    edges.push({ source, target });
  }
  return { nodes: [...nodes.values()], edges, gatedAnchor };
}
function groupDepths(graph) {
  return new Map(graph.groups.map((g) => [g.id, groupChain(graph, g.id).length - 1]));
}
function defaultExpanded(graph, budget) {
  const depths = groupDepths(graph);
  const maxDepth = Math.max(-1, ...depths.values());
  let expanded = /* @__PURE__ */ new Set();
  for (let depth = 0; depth <= maxDepth; depth++) {
    const next = new Set(expanded);
    for (const [id, d] of depths) if (d === depth) next.add(id);
    if (visibleGraph(graph, next).nodes.length > budget) break;
    expanded = next;
  }
  return expanded;
}
function toggleGroup(graph, expanded, group) {
  const next = new Set(expanded);
  if (!next.has(group)) {
    for (const id of groupChain(graph, group)) next.add(id);
    return next;
  }
  for (const g of graph.groups) {
    if (groupChain(graph, g.id).includes(group)) next.delete(g.id);
  }
  return next;
}
function layerToOpen(node) {
  return node.gatedLayers.length ? node.gatedLayers[node.gatedLayers.length - 1] : null;
}

// src/labels.ts
function segmentsOf(path) {
  return path.split(".");
}
function tidy(segments) {
  return segments.map((s) => s.replace(/^_+/, "") || s).join(".");
}
function shortNames(paths) {
  const split = paths.map(segmentsOf);
  const out = /* @__PURE__ */ new Map();
  split.forEach((segments, i) => {
    let n = Math.min(2, segments.length);
    const unique = (k) => {
      const end = segments.slice(-k).join(".");
      return split.every((other, j) => j === i || paths[j] === paths[i] || !(other.join(".") === end || other.join(".").endsWith("." + end)));
    };
    while (n < segments.length && (!unique(n) || /^\d+$/.test(segments[segments.length - n]))) n++;
    out.set(paths[i], tidy(segments.slice(-n)));
  });
  return out;
}
function datapathLabel(name, role) {
  const label = ROLE_LABELS[role] ?? role;
  return name.toLowerCase().includes(role.toLowerCase()) ? name : `${name} — ${label}`;
}

// src/theme.ts
function followTheme(root, host) {
  let body = null;
  try {
    body = host !== window ? host.document.body : null;
  } catch {
    body = null;
  }
  const media = window.matchMedia?.("(prefers-color-scheme: dark)");
  const apply = () => {
    const dark = body ? body.classList.contains("dark-mode") : media?.matches ?? false;
    root.classList.toggle("dark", dark);
    document.documentElement.style.colorScheme = dark ? "dark" : "light";
  };
  apply();
  if (body) new MutationObserver(apply).observe(body, { attributes: true, attributeFilter: ["class"] });
  else media?.addEventListener?.("change", apply);
}

// src/hashState.ts
var PREFIX = "aevis.";
function parseHash(hash) {
  const body = hash.startsWith("#") ? hash.slice(1) : hash;
  let tab = null;
  const entries = [];
  for (const part of body.split("&")) {
    if (part === "") continue;
    const pieces = part.split("=");
    if (pieces.length === 1) tab = safeDecode(pieces[0]);
    else if (pieces.length === 2) entries.push([safeDecode(pieces[0]), safeDecode(pieces[1])]);
  }
  return { tab, entries };
}
function safeDecode(text) {
  try {
    return decodeURIComponent(text);
  } catch {
    return text;
  }
}
function parseIntList(text) {
  if (text === "") return void 0;
  const values = text.split(",").map((t) => Number(t));
  return values.every((v) => Number.isInteger(v) && v >= 0) ? values : void 0;
}
function parseNonNegativeInt(text) {
  const value = Number(text);
  return text !== "" && Number.isInteger(value) && value >= 0 ? value : void 0;
}
function readViewState(hash) {
  const state = {};
  for (const [key, value] of parseHash(hash).entries) {
    if (!key.startsWith(PREFIX)) continue;
    switch (key.slice(PREFIX.length)) {
      case "run":
        state.run = value;
        break;
      case "analysis":
        state.analysis = value;
        break;
      case "method":
        state.method = value;
        break;
      case "step":
        state.step = parseNonNegativeInt(value);
        break;
      case "examples":
        state.examples = parseIntList(value);
        break;
      case "layer":
        state.layer = value;
        break;
      case "channel":
        state.channel = parseNonNegativeInt(value);
        break;
      case "diff": {
        const pair = parseIntList(value);
        if (pair && pair.length === 2) state.diff = [pair[0], pair[1]];
        break;
      }
      case "expanded":
        state.expanded = value === "" ? [] : value.split(",");
        break;
      case "distance":
        if (value === "l2" || value === "rms") state.distance = value;
        break;
      case "view": {
        const v = value.split(",").map(Number);
        if (v.length === 3 && v.every(Number.isFinite) && v[0] > 0) state.view = [v[0], v[1], v[2]];
        break;
      }
    }
  }
  for (const key of Object.keys(state)) {
    if (state[key] === void 0) delete state[key];
  }
  return state;
}
function serialise(state) {
  const out = [];
  const put = (key, value) => {
    if (value !== void 0) out.push([PREFIX + key, value]);
  };
  put("run", state.run);
  put("analysis", state.analysis);
  put("method", state.method);
  put("step", state.step === void 0 ? void 0 : String(state.step));
  put("examples", state.examples?.join(","));
  put("layer", state.layer);
  put("channel", state.channel === void 0 ? void 0 : String(state.channel));
  put("diff", state.diff?.join(","));
  put("expanded", state.expanded?.join(","));
  put("distance", state.distance);
  put("view", state.view?.map((v, i) => i === 0 ? Number(v.toPrecision(4)) : Math.round(v)).join(","));
  return out;
}
function writeViewState(hash, state, defaultTab) {
  const parsed = parseHash(hash);
  const kept = parsed.entries.filter(([key]) => !key.startsWith(PREFIX));
  const parts = [encodeURIComponent(parsed.tab ?? defaultTab)];
  for (const [key, value] of [...kept, ...serialise(state)]) {
    parts.push(`${encodeURIComponent(key)}=${encodeURIComponent(value)}`);
  }
  return "#" + parts.join("&");
}

// src/dagLayout.ts
var DEFAULTS = { rankGap: 40, rowGap: 24, sweeps: 4 };
function topologicalOrder(ids, edges) {
  const indegree = new Map(ids.map((id) => [id, 0]));
  const out = new Map(ids.map((id) => [id, []]));
  for (const e of edges) {
    if (!indegree.has(e.source) || !indegree.has(e.target)) {
      throw new Error(`edge ${e.source} -> ${e.target} names an unknown node`);
    }
    out.get(e.source).push(e.target);
    indegree.set(e.target, indegree.get(e.target) + 1);
  }
  const queue = ids.filter((id) => indegree.get(id) === 0);
  const order = [];
  for (let head = 0; head < queue.length; head++) {
    const id = queue[head];
    order.push(id);
    for (const t of out.get(id)) {
      const d = indegree.get(t) - 1;
      indegree.set(t, d);
      if (d === 0) queue.push(t);
    }
  }
  if (order.length !== ids.length) throw new Error("the model graph has a cycle; the layout needs a DAG");
  return order;
}
function longestPathRanks(ids, edges) {
  const rank = new Map(ids.map((id) => [id, 0]));
  const incoming = new Map(ids.map((id) => [id, []]));
  for (const e of edges) incoming.get(e.target)?.push(e.source);
  for (const id of topologicalOrder(ids, edges)) {
    for (const s of incoming.get(id)) rank.set(id, Math.max(rank.get(id), rank.get(s) + 1));
  }
  return rank;
}
function countCrossings(orders, edges) {
  const position = /* @__PURE__ */ new Map();
  orders.forEach((ids, r) => ids.forEach((id, i) => position.set(id, [r, i])));
  const byRank = /* @__PURE__ */ new Map();
  for (const [a, b] of edges) {
    const [ra, ia] = position.get(a);
    const [rb, ib] = position.get(b);
    if (rb !== ra + 1) continue;
    if (!byRank.has(ra)) byRank.set(ra, []);
    byRank.get(ra).push([ia, ib]);
  }
  let crossings = 0;
  for (const list of byRank.values()) {
    for (let i = 0; i < list.length; i++) {
      for (let j = i + 1; j < list.length; j++) {
        const [a1, b1] = list[i];
        const [a2, b2] = list[j];
        if ((a1 - a2) * (b1 - b2) < 0) crossings++;
      }
    }
  }
  return crossings;
}
function layoutDag(nodes, edges, options = {}) {
  const opt = { ...DEFAULTS, ...options };
  const ids = nodes.map((n) => n.id);
  const ranks = longestPathRanks(ids, edges);
  const topo = topologicalOrder(ids, edges);
  const segments = [];
  const chains = [];
  const rankOf = new Map(ranks);
  edges.forEach((e, k) => {
    const r0 = ranks.get(e.source);
    const r1 = ranks.get(e.target);
    const chain = [e.source];
    for (let r = r0 + 1; r < r1; r++) {
      const dummy = `\0dummy:${k}:${r}`;
      rankOf.set(dummy, r);
      chain.push(dummy);
    }
    chain.push(e.target);
    for (let i = 0; i + 1 < chain.length; i++) segments.push([chain[i], chain[i + 1]]);
    chains.push(chain);
  });
  const maxRank = Math.max(0, ...rankOf.values());
  const orders = Array.from({ length: maxRank + 1 }, () => []);
  for (const id of topo) orders[rankOf.get(id)].push(id);
  chains.forEach((chain) => chain.slice(1, -1).forEach((d) => orders[rankOf.get(d)].push(d)));
  const preds = /* @__PURE__ */ new Map();
  const succs = /* @__PURE__ */ new Map();
  for (const [a, b] of segments) {
    if (!succs.has(a)) succs.set(a, []);
    if (!preds.has(b)) preds.set(b, []);
    succs.get(a).push(b);
    preds.get(b).push(a);
  }
  const reorder = (r, neighbours, ref) => {
    const refPos = new Map(ref.map((id, i) => [id, i]));
    const current = orders[r];
    const keyed = current.map((id, i) => {
      const ns = (neighbours.get(id) ?? []).filter((n) => refPos.has(n));
      const bary = ns.length ? ns.reduce((s, n) => s + refPos.get(n), 0) / ns.length : i;
      return { id, bary, i };
    });
    keyed.sort((a, b) => a.bary - b.bary || a.i - b.i);
    orders[r] = keyed.map((k) => k.id);
  };
  let best = orders.map((o) => [...o]);
  let bestCrossings = countCrossings(orders, segments);
  for (let sweep = 0; sweep < opt.sweeps && bestCrossings > 0; sweep++) {
    if (sweep % 2 === 0) for (let r = 1; r <= maxRank; r++) reorder(r, preds, orders[r - 1]);
    else for (let r = maxRank - 1; r >= 0; r--) reorder(r, succs, orders[r + 1]);
    const crossings = countCrossings(orders, segments);
    if (crossings < bestCrossings) {
      bestCrossings = crossings;
      best = orders.map((o) => [...o]);
    }
  }
  const sizes = new Map(nodes.map((n) => [n.id, n]));
  const rankWidth = Array.from({ length: maxRank + 1 }, () => 0);
  let rowHeight = 0;
  for (const n of nodes) {
    rankWidth[ranks.get(n.id)] = Math.max(rankWidth[ranks.get(n.id)], n.width);
    rowHeight = Math.max(rowHeight, n.height);
  }
  const rankX = [];
  let cursor = 0;
  for (let r = 0; r <= maxRank; r++) {
    const w = Math.max(rankWidth[r], 8);
    rankX.push(cursor + w / 2);
    cursor += w + opt.rankGap;
  }
  const pitch = rowHeight + opt.rowGap;
  const place = /* @__PURE__ */ new Map();
  let maxRow = 0;
  best.forEach(
    (ids2, r) => ids2.forEach((id, row) => {
      place.set(id, [rankX[r], rowHeight / 2 + row * pitch]);
      maxRow = Math.max(maxRow, row);
    })
  );
  const placed = /* @__PURE__ */ new Map();
  for (const id of topo) {
    const [x, y] = place.get(id);
    const n = sizes.get(id);
    const row = Math.round((y - rowHeight / 2) / pitch);
    placed.set(id, { id, x, y, width: n.width, height: n.height, rank: ranks.get(id), row });
  }
  const routed = chains.map((chain, k) => {
    const s = placed.get(chain[0]);
    const t = placed.get(chain[chain.length - 1]);
    const points = [[s.x + s.width / 2, s.y]];
    for (const d of chain.slice(1, -1)) points.push(place.get(d));
    points.push([t.x - t.width / 2, t.y]);
    return { source: edges[k].source, target: edges[k].target, points };
  });
  return {
    nodes: placed,
    edges: routed,
    width: Math.max(0, cursor - opt.rankGap),
    height: rowHeight + maxRow * pitch
  };
}

// src/diffChart.ts
function verdict(diff, r, detected, diverging, merging, name) {
  const L = diff.length;
  const window2 = Math.max(0, Math.min(r, L - 1));
  const falls = [];
  for (let l = L - window2; l < L; l++) if (!(diff[l] > diff[l - 1])) falls.push(l);
  const rises = window2 - falls.length;
  if (detected) {
    const from = diverging === null ? "" : `diverges at ${name(diverging)}, `;
    return { detected, rises, r: window2, text: `Pattern (Eq. 10): ${from}merges at ${merging === null ? name(L - 1) : name(merging)} — diff rises over all of the last ${window2} layers and peaks at the last.` };
  }
  let why;
  if (falls.length > 0) {
    why = `diff falls at ${falls.length} of the last ${window2} layers (${falls.slice(0, 3).map(name).join(", ")}${falls.length > 3 ? ", …" : ""})`;
  } else {
    why = "the last layer is not the curve's maximum";
  }
  const candidate = merging === null ? " The adversarial datapath is never closer to the target than to the source." : ` Best candidate: ${diverging === null ? "" : `diverging ${name(diverging)}, `}merging ${name(merging)}.`;
  return { detected, rises, r: window2, text: `No pattern (Eq. 10): ${why}.${candidate}` };
}
function drawDiffChart(layer, values, r, g, unit) {
  const points = values.map((v, l) => g.xs[l] === null || !Number.isFinite(v) ? null : [g.xs[l], v]).filter((p) => p !== null);
  if (points.length === 0) return;
  const lo = Math.min(0, ...points.map((p) => p[1]));
  const hi = Math.max(0, ...points.map((p) => p[1]));
  const span = hi - lo || 1;
  const y = (v) => g.top + 18 + (1 - (v - lo) / span) * (g.height - 24);
  layer.appendChild(svgEl("rect", { class: "chart-frame", x: g.left, y: g.top, width: Math.max(0, g.right - g.left), height: g.height, fill: "#fafafa" }));
  const L = values.length;
  const first = g.xs[Math.max(0, L - 1 - r)];
  const last = g.xs[L - 1];
  if (first !== null && last !== null && r > 0) {
    layer.appendChild(svgEl("rect", { class: "last-r-window", x: first, y: g.top, width: Math.max(2, last - first), height: g.height, fill: "rgba(121,134,203,0.16)" }, [
      svgTitle(`Eq. 10 window: the last ${r} layers must all rise and the last must be the maximum`)
    ]));
  }
  layer.appendChild(svgEl("line", { class: "zero-line", x1: g.left, x2: g.right, y1: y(0), y2: y(0), stroke: "#757575", "stroke-dasharray": "2 3" }));
  const d = points.map((p, k) => `${k ? "L" : "M"}${p[0].toFixed(1)},${y(p[1]).toFixed(1)}`).join(" ");
  layer.appendChild(svgEl("path", { class: "diff-curve", d, fill: "none", stroke: "#37474f", "stroke-width": 1.6 }));
  for (const [x, v] of points) {
    layer.appendChild(svgEl("circle", { class: "diff-point", cx: x, cy: y(v), r: 2.2, fill: v > 0 ? "#9467bd" : "#1f77b4" }));
  }
  layer.appendChild(svgEl("text", { x: g.left + 4, y: g.top + 11, "font-size": 10, fill: "#757575" }, [
    `diff(l) = d(adv, source) − d(adv, target), ${unit}; above 0: closer to the target · max ${formatValue(hi)}, min ${formatValue(lo)} · shaded: the last r = ${r} layers (Eq. 10 window)`
  ]));
}

// src/panZoom.ts
var IDENTITY = { k: 1, x: 0, y: 0 };
function zoomAt(t, factor, px, py, kMin, kMax) {
  const k = Math.min(kMax, Math.max(kMin, t.k * factor));
  const cx = (px - t.x) / t.k;
  const cy = (py - t.y) / t.k;
  return { k, x: px - cx * k, y: py - cy * k };
}
function panBy(t, dx, dy) {
  return { k: t.k, x: t.x + dx, y: t.y + dy };
}

// src/riverGeometry.ts
function layerAnchors(numLayers, boxOf) {
  const shared = /* @__PURE__ */ new Map();
  for (let l = 0; l < numLayers; l++) {
    const box = boxOf(l);
    if (!box) continue;
    if (!shared.has(box)) shared.set(box, []);
    shared.get(box).push(l);
  }
  const anchors = Array.from({ length: numLayers }, () => null);
  for (const [box, layers] of shared) {
    const n = layers.length;
    layers.forEach((l, k) => {
      const x = n === 1 ? box.x : box.x - box.width / 2 + (k + 0.5) * box.width / n;
      anchors[l] = [x, box.y];
    });
  }
  return anchors;
}
function fmt(v) {
  return String(Math.round(v * 100) / 100);
}
function smoothPath(points) {
  if (points.length === 0) return "";
  const parts = [`M${fmt(points[0][0])},${fmt(points[0][1])}`];
  if (points.length === 1) return parts[0];
  for (let i = 0; i + 1 < points.length; i++) {
    const p0 = points[Math.max(0, i - 1)];
    const p1 = points[i];
    const p2 = points[i + 1];
    const p3 = points[Math.min(points.length - 1, i + 2)];
    const c1 = [p1[0] + (p2[0] - p0[0]) / 6, p1[1] + (p2[1] - p0[1]) / 6];
    const c2 = [p2[0] - (p3[0] - p1[0]) / 6, p2[1] - (p3[1] - p1[1]) / 6];
    parts.push(`C${fmt(c1[0])},${fmt(c1[1])} ${fmt(c2[0])},${fmt(c2[1])} ${fmt(p2[0])},${fmt(p2[1])}`);
  }
  return parts.join(" ");
}

// src/networkView.ts
var OP_WIDTH = 64;
var OP_HEIGHT = 24;
var GROUP_HEIGHT = 34;
var GROUP_MIN_WIDTH = 96;
var GATED_PITCH = 26;
var MIN_HEIGHT = 520;
var MAX_HEIGHT = 720;
var BAND_SHARE = 0.3;
var BAND_TOP = 34;
var AXIS_HEIGHT = 44;
var CHART_HEIGHT = 96;
var VERDICT_HEIGHT = 22;
var SIDE = 24;
var GROUP_HEADROOM = 56;
var K_MAX = 4;
var MINIMAP_WIDTH = 240;
function zones(height) {
  const band = Math.round(height * BAND_SHARE);
  const axis = BAND_TOP + band + 6;
  const chart = axis + AXIS_HEIGHT;
  const verdictY = chart + CHART_HEIGHT + 15;
  const graph = chart + CHART_HEIGHT + VERDICT_HEIGHT + 6;
  return { bandTop: BAND_TOP, band, axis, chart, verdictY, graph };
}
function truncate(text, max) {
  return text.length > max ? text.slice(0, Math.max(1, max - 1)) + "…" : text;
}
function nodeSize(node) {
  if (node.kind === "group") return { width: Math.max(GROUP_MIN_WIDTH, GATED_PITCH * node.gatedLayers.length), height: GROUP_HEIGHT };
  return { width: OP_WIDTH, height: OP_HEIGHT };
}
function pairLabel(key, names) {
  return key.split(",").map((i) => names.get(Number(i)) ?? `#${i}`).join(" – ");
}
function strokeWidth(k, n) {
  return Math.round((2.5 + 2.5 * (n - 1 - k)) * 10) / 10;
}
function drawOrder(river) {
  const rank = (role) => role === "target" ? 0 : role === "source" ? 1 : 2;
  return [...river.paths].sort((a, b) => rank(a.role) - rank(b.role) || a.example - b.example);
}
var NetworkView = class {
  constructor() {
    this.transform = IDENTITY;
    this.layout = null;
    this.input = null;
    /** Content x of each river layer (null: not shown by the visible graph). */
    this.anchors = [];
    this.draggedSincePointerDown = false;
    this.renders = 0;
    /** Pixel height of the view (set per render). */
    this.height = MIN_HEIGHT;
    this.viewport = svgEl("g", { class: "viewport" });
    this.screen = svgEl("g", { class: "screen" });
    this.svg = svgEl("svg", { class: "network-svg", width: "100%", height: MIN_HEIGHT, role: "img", "aria-label": "datapath river, diff chart and model graph" }, [
      svgEl("defs", {}, [
        svgEl("marker", { id: "aevis-arrow", viewBox: "0 0 10 10", refX: 10, refY: 5, markerWidth: 6, markerHeight: 6, orient: "auto-start-reverse" }, [
          svgEl("path", { d: "M0,0 L10,5 L0,10 z", fill: "#9e9e9e" })
        ]),
        svgEl("clipPath", { id: "aevis-graph-clip" }, [svgEl("rect", { class: "graph-clip", x: 0, y: zones(MIN_HEIGHT).graph, width: 1e4, height: 1e4 })])
      ]),
      svgEl("rect", { class: "background", x: 0, y: 0, width: "100%", height: "100%", fill: "#ffffff" }),
      svgEl("g", { "clip-path": "url(#aevis-graph-clip)" }, [this.viewport]),
      this.screen
    ]);
    this.minimapView = svgEl("rect", { class: "minimap-view", fill: "rgba(255,152,0,0.12)", stroke: "#ef6c00", "stroke-width": 1, "vector-effect": "non-scaling-stroke" });
    this.minimap = svgEl("svg", { class: "minimap", width: MINIMAP_WIDTH, height: 60, "aria-label": "mini-map of the model graph: click to move the view" });
    this.tooltip = el("div", { class: "tooltip", role: "tooltip" });
    this.tooltip.hidden = true;
    this.element = el("div", { class: "network" }, [this.svg, this.minimap, this.tooltip]);
    this.installPanZoom();
  }
  /**
   * Draw the graph, the river and the chart; `view`: keep this transform (a restored or
   * current view), else fit everything. `keepLayer`: keep that river layer at the same
   * screen x as before (expanding a group keeps the view where it is).
   */
  render(input, view = null, keepLayer = null) {
    const width = this.svg.getBoundingClientRect().width || 800;
    const oldScreenX = keepLayer !== null && this.anchors[keepLayer] ? this.anchors[keepLayer][0] * this.transform.k + this.transform.x : null;
    this.tooltip.hidden = true;
    this.input = input;
    clear(this.viewport);
    const visible = visibleGraph(input.graph, input.expanded);
    const sizes = new Map(visible.nodes.map((n) => [n.id, nodeSize(n)]));
    const layout = layoutDag(visible.nodes.map((n) => ({ id: n.id, ...sizes.get(n.id) })), visible.edges, { rankGap: 36, rowGap: 28 });
    this.layout = layout;
    const groupsLayer = svgEl("g", { class: "expanded-groups" });
    const edgesLayer = svgEl("g", { class: "edges" });
    const nodesLayer = svgEl("g", { class: "nodes" });
    this.viewport.append(groupsLayer, edgesLayer, nodesLayer);
    this.drawExpandedGroups(groupsLayer, input, visible.nodes, layout);
    for (const edge of layout.edges) {
      edgesLayer.appendChild(svgEl("path", {
        class: "graph-edge",
        "data-source": edge.source,
        "data-target": edge.target,
        d: smoothPath(edge.points),
        fill: "none",
        stroke: "#bdbdbd",
        "stroke-width": 1.2,
        "marker-end": "url(#aevis-arrow)"
      }));
    }
    const selectedIndex = input.selectedLayer === null ? -1 : input.layerNames.indexOf(input.selectedLayer);
    for (const node of visible.nodes) nodesLayer.appendChild(this.drawNode(node, layout, input, selectedIndex));
    const manifestIndex = input.river.layers.map((name) => input.layerNames.indexOf(name));
    const boxes = /* @__PURE__ */ new Map();
    for (const [id, p] of layout.nodes) boxes.set(id, { x: p.x, y: p.y, width: p.width * 0.8, height: p.height });
    this.anchors = layerAnchors(input.river.layers.length, (i) => {
      const anchor = visible.gatedAnchor.get(manifestIndex[i]);
      return anchor === void 0 ? void 0 : boxes.get(anchor);
    });
    const fitK = this.fitTransform(width).k;
    const needed = (zones(MIN_HEIGHT).graph - MIN_HEIGHT * BAND_SHARE + (layout.height + GROUP_HEADROOM) * fitK + 40) / (1 - BAND_SHARE);
    this.height = Math.round(Math.max(MIN_HEIGHT, Math.min(MAX_HEIGHT, needed)));
    this.svg.setAttribute("height", String(this.height));
    this.svg.querySelector(".graph-clip").setAttribute("y", String(zones(this.height).graph));
    if (view) this.transform = view;
    else if (oldScreenX !== null && keepLayer !== null && this.anchors[keepLayer]) {
      this.transform = { ...this.transform, x: oldScreenX - this.anchors[keepLayer][0] * this.transform.k };
    } else this.transform = this.fitTransform(width);
    this.setTransform(this.transform);
    const drawn = ++this.renders;
    afterNextFrame(() => {
      if (drawn === this.renders) this.updateMinimap(nodesLayer);
    });
    return input.river.paths.length;
  }
  /** Transform showing every gated layer (and the whole graph width) across the view. */
  fitTransform(width) {
    if (!this.layout) return IDENTITY;
    const xs = this.anchors.filter((a) => a !== null).map((a) => a[0]);
    const x0 = xs.length ? Math.min(...xs) : 0;
    const x1 = xs.length ? Math.max(...xs) : this.layout.width;
    const side = SIDE + 30;
    const k = Math.min(1, (width - 2 * side) / Math.max(1, x1 - x0));
    const z = zones(this.height);
    return { k, x: side + (width - 2 * side - (x1 - x0) * k) / 2 - x0 * k, y: z.graph + 8 + GROUP_HEADROOM * k };
  }
  fit() {
    this.setTransform(this.fitTransform(this.viewSize()[0]));
    this.input?.onViewChange(this.transform);
  }
  zoomBy(factor) {
    const [w] = this.viewSize();
    this.setTransform(zoomAt(this.transform, factor, w / 2, zones(this.height).graph, this.kMin(), K_MAX));
    this.input?.onViewChange(this.transform);
  }
  /** The current pan and zoom. */
  view() {
    return { ...this.transform };
  }
  kMin() {
    return Math.min(0.02, this.fitTransform(this.viewSize()[0]).k / 2);
  }
  drawExpandedGroups(layer, input, nodes, layout) {
    const nodeGroup = new Map(input.graph.nodes.map((n) => [n.id, n.group]));
    const members = /* @__PURE__ */ new Map();
    for (const node of nodes) {
      const chain = groupChain(input.graph, node.kind === "group" ? node.id : nodeGroup.get(node.id) ?? null);
      for (const g of chain) if (g !== node.id && input.expanded.has(g)) {
        if (!members.has(g)) members.set(g, []);
        members.get(g).push(node.id);
      }
    }
    const depth = (g) => groupChain(input.graph, g).length;
    const ordered = [...members.keys()].sort((a, b) => depth(a) - depth(b));
    const inner = new Map(ordered.map((g) => [g, 0]));
    for (const g of ordered) {
      for (const ancestor of groupChain(input.graph, g)) {
        if (ancestor !== g && inner.has(ancestor)) inner.set(ancestor, Math.max(inner.get(ancestor), depth(g) - depth(ancestor)));
      }
    }
    for (const group of ordered) {
      const placed = members.get(group).map((id) => layout.nodes.get(id));
      const levels = inner.get(group);
      const pad = 8 + 6 * levels;
      const x0 = Math.min(...placed.map((p) => p.x - p.width / 2)) - pad;
      const x1 = Math.max(...placed.map((p) => p.x + p.width / 2)) + pad;
      const y0 = Math.min(...placed.map((p) => p.y - p.height / 2)) - 20 - 16 * levels;
      const y1 = Math.max(...placed.map((p) => p.y + p.height / 2)) + pad;
      const box = svgEl("g", { class: "expanded-group", "data-group": group }, [
        svgEl("rect", { x: x0, y: y0, width: x1 - x0, height: y1 - y0, rx: 8, fill: "rgba(63,81,181,0.04)", stroke: "#9fa8da", "stroke-dasharray": "4 3" }),
        svgEl("text", { class: "group-label", x: x0 + 20, y: y0 + 12, "font-size": 11, fill: "#3949ab", "font-family": "Roboto, sans-serif" }, [input.shortNames.get(group) ?? group, svgTitle(group)]),
        svgEl("g", { class: "toggle", "data-group": group, cursor: "pointer" }, [
          svgEl("rect", { x: x0 + 4, y: y0 + 3, width: 12, height: 12, rx: 2, fill: "#ffffff", stroke: "#3949ab" }),
          svgEl("text", { x: x0 + 10, y: y0 + 13, "text-anchor": "middle", "font-size": 12, fill: "#3949ab" }, ["−"]),
          svgTitle(`collapse ${group}`)
        ])
      ]);
      box.querySelector(".toggle").addEventListener("click", (ev) => {
        ev.stopPropagation();
        if (!this.draggedSincePointerDown) input.onToggleGroup(group);
      });
      layer.appendChild(box);
    }
  }
  drawNode(node, layout, input, selectedIndex) {
    const p = layout.nodes.get(node.id);
    const x = p.x - p.width / 2;
    const y = p.y - p.height / 2;
    const gated = node.gatedLayers.length > 0;
    const selected = selectedIndex >= 0 && node.gatedLayers.includes(selectedIndex);
    const opened = layerToOpen(node);
    const g = svgEl("g", {
      class: `graph-node ${node.kind}${gated ? " gated" : ""}${selected ? " selected" : ""}`,
      "data-id": node.id,
      cursor: opened === null ? "default" : "pointer"
    });
    const stroke = selected ? "#d84315" : node.kind === "group" ? "#5c6bc0" : gated ? "#546e7a" : "#cfd8dc";
    g.appendChild(svgEl("rect", {
      x,
      y,
      width: p.width,
      height: p.height,
      rx: node.kind === "group" ? 8 : 3,
      fill: node.kind === "group" ? "#e8eaf6" : "#ffffff",
      stroke,
      "stroke-width": selected ? 2.5 : gated ? 1.5 : 1
    }));
    const title = node.kind === "group" ? `${node.id}: ${node.size} operations, ${node.gatedLayers.length} gated layers (click to open the treemap of its last layer; ± expands)` : `${node.id}${gated ? ` (gated layer ${input.layerNames[node.gatedLayers[0]] ?? node.gatedLayers[0]})` : ""}`;
    g.appendChild(svgTitle(title));
    const labelX = node.kind === "group" ? x + 20 + (p.width - 20) / 2 : p.x;
    const shown = node.kind === "group" ? input.shortNames.get(node.id) ?? node.id : node.label;
    g.appendChild(svgEl("text", {
      class: "node-label",
      x: labelX,
      y: p.y + 4,
      "text-anchor": "middle",
      "font-size": 11,
      fill: "#263238",
      "font-family": "Roboto, sans-serif",
      "pointer-events": "none"
    }, [truncate(shown, node.kind === "group" ? Math.floor((p.width - 24) / 6.2) : 10)]));
    if (node.kind === "group") {
      const toggle = svgEl("g", { class: "toggle", "data-group": node.id, cursor: "pointer" }, [
        svgEl("rect", { x: x + 5, y: p.y - 6, width: 12, height: 12, rx: 2, fill: "#ffffff", stroke: "#3949ab" }),
        svgEl("text", { x: x + 11, y: p.y + 4, "text-anchor": "middle", "font-size": 12, fill: "#3949ab" }, ["+"]),
        svgTitle(`expand ${node.id}`)
      ]);
      toggle.addEventListener("click", (ev) => {
        ev.stopPropagation();
        if (!this.draggedSincePointerDown) input.onToggleGroup(node.id);
      });
      g.appendChild(toggle);
    }
    if (opened !== null) {
      g.addEventListener("click", () => {
        if (!this.draggedSincePointerDown) input.onOpenLayer(opened);
      });
    }
    return g;
  }
  /** Screen x of every river layer under transform `t`. */
  screenXs(t) {
    return this.anchors.map((a) => a === null ? null : a[0] * t.k + t.x);
  }
  /**
   * The river, its story span, the layer axis and the diff chart, in screen units, into
   * `target`, for transform `t` and a view `width` pixels wide.
   */
  drawScreen(target, t, width, interactive) {
    const input = this.input;
    const river = input.river;
    const z = zones(this.height);
    const xs = this.screenXs(t);
    const name = (l) => input.shortNames.get(river.layers[l]) ?? river.layers[l];
    const band = svgEl("g", { class: "river" });
    const spanLayer = svgEl("g", { class: "story" });
    const axis = svgEl("g", { class: "axis" });
    const markers = svgEl("g", { class: "markers" });
    const chart = svgEl("g", { class: "diff-chart" });
    const hits = svgEl("g", { class: "hits" });
    target.append(spanLayer, band, axis, markers, chart, hits);
    const dm = input.detection;
    const merging = river.markers.find((m) => m.kind === "merging")?.layer ?? null;
    const diverging = river.markers.find((m) => m.kind === "diverging")?.layer ?? null;
    this.drawSpan(spanLayer, xs, diverging, merging, dm, z, name);
    const selected = input.selectedLayer === null ? -1 : river.layers.indexOf(input.selectedLayer);
    if (selected >= 0 && xs[selected] !== null) {
      band.appendChild(svgEl("line", { class: "selected-layer", x1: xs[selected], x2: xs[selected], y1: z.bandTop - 4, y2: z.chart + CHART_HEIGHT, stroke: "#d84315", "stroke-width": 1.5 }, [
        svgTitle(`${river.layers[selected]}: its feature maps are open below`)
      ]));
    }
    const ordered = drawOrder(river);
    ordered.forEach((path, k) => {
      const points = [];
      xs.forEach((x, l) => {
        if (x !== null && Number.isFinite(path.y[l])) points.push([x, z.bandTop + path.y[l] * z.band]);
      });
      band.appendChild(svgEl("path", {
        class: "river-path",
        "data-example": path.example,
        "data-role": path.role,
        d: smoothPath(points),
        fill: "none",
        stroke: input.colors.get(path.example) ?? "#757575",
        "stroke-width": strokeWidth(k, ordered.length),
        "stroke-linecap": "round",
        "stroke-linejoin": "round",
        "stroke-opacity": 0.95
      }, [svgTitle(datapathLabel(path.name, path.role))]));
    });
    this.drawAxis(axis, xs, z, name, [diverging, merging, selected]);
    for (const marker of river.markers) {
      const x = xs[marker.layer];
      if (x === null || x === void 0) continue;
      const color = marker.kind === "diverging" ? "#c62828" : "#2e7d32";
      const confirmed = marker.detected !== false;
      const top = z.axis + 2;
      markers.appendChild(svgEl("g", { class: `marker ${marker.kind}`, "data-layer": marker.layer, opacity: confirmed ? 1 : 0.6 }, [
        svgEl("line", { x1: x, x2: x, y1: z.bandTop, y2: z.bandTop + z.band, stroke: color, "stroke-width": 1.2, "stroke-dasharray": "3 3" }),
        svgEl("path", { d: `M${x - 6},${top + 9} L${x + 6},${top + 9} L${x},${top} z`, fill: color }),
        svgTitle(`${marker.kind} layer ${river.layers[marker.layer]}${confirmed ? "" : " (best candidate: Eq. 10 did not confirm the pattern)"}`)
      ]));
    }
    const diff = river.diff_curve;
    if (diff && diff.length === river.layers.length) {
      const r = dm?.r ?? Math.min(8, diff.length - 1);
      const unit = river.normalization === "rms" ? "RMS gate distance (L2 / √C_l)" : "L2 gate distance";
      const drawnXs = xs.map((x) => x === null ? null : x);
      drawDiffChart(chart, diff, r, { xs: drawnXs, top: z.chart, height: CHART_HEIGHT, left: 0, right: width }, unit);
      const said = this.verdict();
      if (said) {
        chart.appendChild(svgEl("text", { class: `verdict ${said.detected ? "detected" : "not-detected"}`, x: 8, y: z.verdictY, "font-size": 12, "font-weight": 500, fill: said.detected ? "#2e7d32" : "#6d4c00" }, [said.text]));
      }
    }
    if (interactive) this.drawHits(hits, xs, z);
  }
  /** Eq. 10's verdict on the logged detection, or null without one. */
  verdict() {
    const input = this.input;
    const dm = input?.detection;
    if (!input || !dm || !dm.diff || dm.diff.length < 2) return null;
    const name = (l) => input.shortNames.get(input.layerNames[l]) ?? input.layerNames[l] ?? String(l);
    return verdict(dm.diff, dm.r, dm.detected, dm.diverging_layer, dm.merging_layer, name);
  }
  drawSpan(layer, xs, diverging, merging, dm, z, name) {
    if (merging === null || xs[merging] === null) return;
    const input = this.input;
    const x1 = xs[merging];
    const x0 = diverging !== null && xs[diverging] !== null ? xs[diverging] : x1;
    const confirmed = dm?.detected ?? false;
    const names = new Map(input.river.paths.map((p) => [p.example, p.name]));
    const adv = dm ? names.get(dm.adversarial) : void 0;
    const src = dm ? names.get(dm.source) : void 0;
    const tgt = dm ? names.get(dm.target) : void 0;
    const who = adv && src && tgt ? `${adv} leaves ${src}${diverging !== null ? ` after ${name(diverging)}` : ""} and joins ${tgt} at ${name(merging)}` : `${diverging !== null ? `diverging at ${name(diverging)}, ` : ""}merging at ${name(merging)}`;
    const text = confirmed ? `Diverging → merging: ${who}` : `Best candidate span (Eq. 10 did not confirm a pattern): ${who}`;
    layer.appendChild(svgEl("rect", {
      class: `story-span${confirmed ? " detected" : " candidate"}`,
      x: x0 - 10,
      y: z.bandTop - 8,
      width: Math.max(20, x1 - x0 + 20),
      height: z.band + 16,
      fill: confirmed ? "rgba(255,193,7,0.22)" : "rgba(255,193,7,0.12)",
      stroke: "#ffa000",
      "stroke-dasharray": confirmed ? "" : "5 4",
      rx: 6
    }, [svgTitle(text)]));
    const textWidth = text.length * 6.6;
    const mid = Math.max(textWidth / 2 + 8, Math.min(this.viewSize()[0] - textWidth / 2 - 8, (x0 + x1) / 2));
    layer.appendChild(svgEl("text", { class: "story-label", x: mid, y: z.bandTop - 14, "text-anchor": "middle", "font-size": 13, "font-weight": 500, fill: "#8d5b00" }, [text]));
  }
  /** Layer ticks, and the short names that fit (marked layers first). */
  drawAxis(layer, xs, z, name, first) {
    const river = this.input.river;
    const placed = [];
    const order = [...first.filter((l) => l !== null && l >= 0), ...river.layers.map((_, l) => l)];
    const done = /* @__PURE__ */ new Set();
    xs.forEach((x, l) => {
      if (x === null) return;
      layer.appendChild(svgEl("line", { class: "layer-tick", "data-layer": river.layers[l], x1: x, x2: x, y1: z.bandTop + z.band, y2: z.axis + 2, stroke: "#bdbdbd" }));
    });
    for (const l of order) {
      if (done.has(l) || xs[l] === null) continue;
      done.add(l);
      const label = name(l);
      const w = label.length * 6 + 8;
      const x = xs[l];
      if (placed.some(([a, b]) => x - w / 2 < b && x + w / 2 > a)) continue;
      placed.push([x - w / 2, x + w / 2]);
      layer.appendChild(svgEl("text", { class: "layer-label", "data-layer": river.layers[l], x, y: z.axis + 24, "text-anchor": "middle", "font-size": 10.5, fill: "#37474f" }, [
        label,
        svgTitle(river.layers[l])
      ]));
    }
  }
  drawHits(layer, xs, z) {
    const input = this.input;
    const river = input.river;
    const manifestIndex = river.layers.map((n) => input.layerNames.indexOf(n));
    const names = new Map(river.paths.map((p) => [p.example, p.name]));
    const shown = xs.map((x, i) => ({ x, i })).filter((e) => e.x !== null).sort((a, b) => a.x - b.x);
    shown.forEach(({ x, i }, k) => {
      const left = k > 0 ? (shown[k - 1].x + x) / 2 : x - 12;
      const right = k + 1 < shown.length ? (shown[k + 1].x + x) / 2 : x + 12;
      const hit = svgEl("rect", {
        class: "layer-hit",
        "data-layer": river.layers[i],
        x: Math.max(left, x - 30),
        y: z.bandTop - 8,
        width: Math.max(4, Math.min(right, x + 30) - Math.max(left, x - 30)),
        height: z.chart + CHART_HEIGHT - z.bandTop + 8,
        fill: "transparent",
        cursor: "pointer"
      });
      hit.addEventListener("mousemove", (ev) => this.showTooltip(ev, i, names));
      hit.addEventListener("mouseleave", () => this.tooltip.hidden = true);
      hit.addEventListener("click", () => {
        if (!this.draggedSincePointerDown && manifestIndex[i] >= 0) input.onOpenLayer(manifestIndex[i]);
      });
      layer.appendChild(hit);
    });
  }
  showTooltip(ev, layer, names) {
    const river = this.input.river;
    clear(this.tooltip);
    const short = this.input.shortNames.get(river.layers[layer]);
    this.tooltip.appendChild(el("div", { class: "tooltip-title" }, [`${short ?? river.layers[layer]} (layer ${layer + 1} of ${river.layers.length})`]));
    if (short && short !== river.layers[layer]) this.tooltip.appendChild(el("div", { class: "tooltip-hint" }, [river.layers[layer]]));
    const unit = river.normalization === "rms" ? "RMS distance" : "L2 distance";
    const rows = Object.entries(river.distances).map(
      ([key, values]) => el("tr", {}, [el("td", {}, [pairLabel(key, names)]), el("td", { class: "num" }, [formatValue(values[layer])])])
    );
    this.tooltip.appendChild(el("table", {}, [el("tr", {}, [el("th", {}, ["datapaths"]), el("th", {}, [unit])]), ...rows]));
    if (river.diff_curve) this.tooltip.appendChild(el("div", {}, [`diff (Eq. 9): ${formatValue(river.diff_curve[layer])}`]));
    const marker = river.markers.find((m) => m.layer === layer);
    if (marker) this.tooltip.appendChild(el("div", { class: `tooltip-marker ${marker.kind}` }, [`${marker.kind} layer`]));
    this.tooltip.appendChild(el("div", { class: "tooltip-hint" }, ["click: feature maps of this layer"]));
    const box = this.element.getBoundingClientRect();
    this.tooltip.style.left = `${Math.min(ev.clientX - box.left + 14, box.width - 260)}px`;
    this.tooltip.style.top = `${ev.clientY - box.top + 14}px`;
    this.tooltip.hidden = false;
  }
  // ------------------------------------------------------------- pan & zoom
  viewSize() {
    const r = this.svg.getBoundingClientRect();
    return [r.width || 800, r.height || this.height];
  }
  setTransform(t) {
    this.transform = t;
    this.viewport.setAttribute("transform", `translate(${t.x},${t.y}) scale(${t.k})`);
    this.tooltip.hidden = true;
    const [w, h] = this.viewSize();
    const z = zones(this.height);
    this.minimapView.setAttribute("x", String(-t.x / t.k));
    this.minimapView.setAttribute("y", String((z.graph - t.y) / t.k));
    this.minimapView.setAttribute("width", String(w / t.k));
    this.minimapView.setAttribute("height", String(Math.max(1, h - z.graph) / t.k));
    if (this.layout) this.minimap.style.display = this.layout.width * t.k < w * 1.05 ? "none" : "";
    if (!this.input) return;
    clear(this.screen);
    this.drawScreen(this.screen, t, w, true);
  }
  userTransform(t) {
    this.setTransform(t);
    this.input?.onViewChange(t);
  }
  installPanZoom() {
    this.svg.addEventListener("wheel", (ev) => {
      ev.preventDefault();
      const r = this.svg.getBoundingClientRect();
      this.userTransform(zoomAt(this.transform, Math.exp(-ev.deltaY * 15e-4), ev.clientX - r.left, ev.clientY - r.top, this.kMin(), K_MAX));
    }, { passive: false });
    let last = null;
    let travelled = 0;
    this.svg.addEventListener("pointerdown", (ev) => {
      last = [ev.clientX, ev.clientY];
      travelled = 0;
      this.draggedSincePointerDown = false;
    });
    window.addEventListener("pointermove", (ev) => {
      if (!last) return;
      const dx = ev.clientX - last[0];
      const dy = ev.clientY - last[1];
      travelled += Math.abs(dx) + Math.abs(dy);
      last = [ev.clientX, ev.clientY];
      if (travelled > 4) {
        this.draggedSincePointerDown = true;
        this.userTransform(panBy(this.transform, dx, dy));
      }
    });
    window.addEventListener("pointerup", () => last = null);
    const moveTo = (ev) => {
      if (!this.layout) return;
      const r = this.minimap.getBoundingClientRect();
      const vb = this.minimap.viewBox.baseVal;
      const cx = vb.x + (ev.clientX - r.left) / r.width * vb.width;
      const cy = vb.y + (ev.clientY - r.top) / r.height * vb.height;
      const [w, h] = this.viewSize();
      const z = zones(this.height);
      const t = this.transform;
      this.userTransform({ k: t.k, x: w / 2 - cx * t.k, y: (z.graph + h) / 2 - cy * t.k });
    };
    let minimapDrag = false;
    this.minimap.addEventListener("pointerdown", (ev) => {
      ev.stopPropagation();
      minimapDrag = true;
      moveTo(ev);
    });
    window.addEventListener("pointermove", (ev) => minimapDrag && moveTo(ev));
    window.addEventListener("pointerup", () => minimapDrag = false);
  }
  updateMinimap(nodesLayer) {
    clear(this.minimap);
    if (!this.layout) return;
    const pad = 24;
    const vbW = this.layout.width + 2 * pad;
    const vbH = this.layout.height + 2 * pad;
    this.minimap.setAttribute("viewBox", `${-pad} ${-pad} ${vbW} ${vbH}`);
    this.minimap.setAttribute("height", String(Math.max(30, Math.min(100, MINIMAP_WIDTH * vbH / vbW))));
    this.minimap.setAttribute("preserveAspectRatio", "none");
    const nodes = nodesLayer.cloneNode(true);
    nodes.querySelectorAll("text, title, .toggle").forEach((n) => n.remove());
    for (const node of [nodes, ...nodes.querySelectorAll("*")]) {
      for (const name of node.getAttributeNames()) if (name === "class" || name.startsWith("data-")) node.removeAttribute(name);
    }
    this.minimap.append(svgEl("rect", { x: -pad, y: -pad, width: vbW, height: vbH, fill: "#fafafa" }), nodes, this.minimapView);
    this.setTransform(this.transform);
  }
  /**
   * The whole river (every layer, fitted to `width` pixels whatever the current view),
   * the chart and the graph, with a title and a legend, as a standalone SVG element.
   */
  snapshot(width = Math.max(1200, this.viewSize()[0])) {
    const input = this.input;
    if (!input || !this.layout) return null;
    const head = 26 + 20 * Math.ceil((input.river.paths.length + 3) / 4);
    const t = this.fitTransform(width);
    const z = zones(this.height);
    const height = z.graph + this.layout.height * t.k + 40;
    const out = svgEl("svg", { width, height: Math.round(height + head), viewBox: `0 0 ${width} ${Math.round(height + head)}`, "font-family": "Roboto, Helvetica, Arial, sans-serif" });
    out.appendChild(svgEl("rect", { x: 0, y: 0, width, height: height + head, fill: "#ffffff" }));
    out.appendChild(svgEl("text", { class: "export-title", x: 12, y: 20, "font-size": 15, "font-weight": 500, fill: "#212121", "font-family": "Roboto, sans-serif" }, [input.title]));
    const legend = svgEl("g", { class: "export-legend", "font-family": "Roboto, sans-serif", "font-size": 12 });
    const items = input.river.paths.map((p) => ["line", input.colors.get(p.example) ?? "#757575", datapathLabel(p.name, p.role)]);
    items.push(["span", "rgba(255,193,7,0.4)", "diverging → merging span"], ["tri-d", "#c62828", "diverging layer"], ["tri-m", "#2e7d32", "merging layer"]);
    items.forEach(([kind, color, text], k) => {
      const x = 12 + k % 4 * ((width - 24) / 4);
      const y = 40 + Math.floor(k / 4) * 20;
      legend.appendChild(kind === "line" ? svgEl("line", { x1: x, x2: x + 24, y1: y - 4, y2: y - 4, stroke: color, "stroke-width": 4 }) : kind === "span" ? svgEl("rect", { x, y: y - 10, width: 24, height: 12, fill: color }) : svgEl("path", { d: `M${x + 6},${y} L${x + 18},${y} L${x + 12},${y - 10} z`, fill: color }));
      legend.appendChild(svgEl("text", { x: x + 30, y, fill: "#212121" }, [text]));
    });
    out.appendChild(legend);
    const body = svgEl("g", { transform: `translate(0,${head})` });
    const graph = this.viewport.cloneNode(true);
    graph.setAttribute("transform", `translate(${t.x},${t.y}) scale(${t.k})`);
    const screen = svgEl("g", {});
    this.drawScreen(screen, t, width, false);
    body.append(svgEl("defs", {}, [this.svg.querySelector("marker").cloneNode(true)]), graph, screen);
    out.appendChild(body);
    return out;
  }
};

// src/contributionPanel.ts
var SCORE_MEANING = "Score: the gate (0 to 1) that Eq. 7/8 keeps open on this earlier feature map while it closes as many earlier maps as it can and keeps the selected neurons' activation; higher means the selection needs this map more (the mean over the chosen examples).";
var TOP_K = 10;
function thumbnail(url, alt, cls) {
  if (!url) return el("span", { class: `thumb ${cls} none`, title: `no ${alt} logged` }, ["—"]);
  const image = el("img", { class: `thumb ${cls}`, src: url, alt, width: 40, height: 40, loading: "lazy" });
  image.addEventListener("error", () => image.replaceWith(el("span", { class: `thumb ${cls} none`, title: `no ${alt} logged` }, ["—"])));
  return image;
}
var ContributionPanel = class {
  constructor() {
    this.element = el("div", { class: "contribution-result" });
    this.element.hidden = true;
  }
  hide() {
    this.element.hidden = true;
    clear(this.element);
  }
  render(input) {
    const { answer } = input;
    clear(this.element);
    this.element.hidden = false;
    const entries = (answer.ranking ?? []).slice(0, TOP_K).map((e, k) => ({ ...e, rank: e.rank ?? k + 1 }));
    const examples = answer.examples ?? [];
    const top = Math.max(1e-12, ...entries.map((e) => Math.abs(e.score)));
    const list = el("ol", { class: "contribution-list" });
    for (const entry of entries) {
      const inPaths = entry.in_datapaths;
      const chips = inPaths === void 0 ? [el("span", { class: "note" }, ["datapaths not reported by this server"])] : inPaths.length === 0 ? [el("span", { class: "chip none" }, ["in no datapath"])] : inPaths.map((i) => el("span", { class: "chip", style: `border-color:${input.colors.get(i) ?? "#9e9e9e"}` }, [input.names.get(i) ?? `#${i}`]));
      const activation = entry.activation_map !== void 0 ? entry.activation_map : examples.length ? input.activationUrl(entry.channel, examples[0]) : null;
      const learned = entry.learned_feature !== void 0 ? entry.learned_feature : input.learnedUrl(entry.channel);
      const item = el("li", {
        class: "contribution-entry",
        "data-channel": entry.channel,
        tabindex: 0,
        role: "button",
        title: `open feature map ${entry.channel} of ${answer.earlier_layer} at the neuron level`
      }, [
        el("span", { class: "rank" }, [`#${entry.rank}`]),
        el("span", { class: "channel" }, [`map ${entry.channel}`]),
        el("span", { class: "score-bar" }, [el("span", { style: `width:${Math.round(100 * Math.abs(entry.score) / top)}%` })]),
        el("span", { class: "score" }, [formatValue(entry.score)]),
        el("span", { class: "chips" }, chips),
        thumbnail(activation, "activation map", "activation"),
        thumbnail(learned, "learned feature", "learned")
      ]);
      const open = () => input.onOpen(entry.channel);
      item.addEventListener("click", open);
      item.addEventListener("keydown", (ev) => {
        if (ev.key === "Enter" || ev.key === " ") open();
      });
      list.appendChild(item);
    }
    const who = examples.length ? ` · computed for ${examples.map((i) => input.names.get(i) ?? `#${i}`).join(", ")}` : "";
    this.element.append(
      el("h4", {}, [`Top ${entries.length} contributing feature maps of ${answer.earlier_layer}`]),
      el("div", { class: "note" }, [`${input.label}${who} · ${answer.mode}, ${formatValue(answer.seconds)} s`]),
      el("div", { class: "score-meaning" }, [answer.score_meaning ?? SCORE_MEANING]),
      el("div", { class: "contribution-head note" }, ["rank · feature map · score · in the datapaths of · activation (first chosen example) · learned feature — click an entry to open it"]),
      list
    );
    return entries.length;
  }
};

// src/neuronView.ts
var MAP_SIZE = 112;
var REFERENCE_SIZE = 72;
var LUT = greenLookupTable();
function paintGreen(canvas, bitmap, own, scale) {
  canvas.width = bitmap.width;
  canvas.height = bitmap.height;
  const ctx = canvas.getContext("2d");
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
function sharedRange(ranges) {
  return [Math.min(...ranges.map((r) => r[0])), Math.max(...ranges.map((r) => r[1]))];
}
function boxPercent(box, width, height) {
  const clip = (v, hi) => Math.min(hi, Math.max(0, v));
  const [y0, x0, y1, x1] = [clip(box[0], height), clip(box[1], width), clip(box[2], height), clip(box[3], width)];
  return [100 * x0 / width, 100 * y0 / height, 100 * (x1 - x0) / width, 100 * (y1 - y0) / height];
}
function learnedFeatureSource(f) {
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
var NeuronView = class {
  constructor() {
    /** One colour scale for every example's map of the feature map (false: each map its own range). */
    this.shared = true;
    this.last = null;
    this.selection = null;
    this.overlays = [];
    this.element = el("div", { class: "neuron" });
  }
  /** The area last dragged on an activation map (the same neurons in every example), or null. */
  area() {
    return this.selection;
  }
  showSelection() {
    for (const overlay of this.overlays) {
      const canvas = overlay.parentElement?.querySelector("canvas");
      if (!this.selection || !canvas) {
        overlay.hidden = true;
        continue;
      }
      const [y0, x0, y1, x1] = this.selection.area;
      const [h, w] = this.selection.grid;
      overlay.hidden = false;
      overlay.style.left = `${canvas.offsetLeft + x0 / w * canvas.clientWidth}px`;
      overlay.style.top = `${canvas.offsetTop + y0 / h * canvas.clientHeight}px`;
      overlay.style.width = `${(x1 - x0) / w * canvas.clientWidth}px`;
      overlay.style.height = `${(y1 - y0) / h * canvas.clientHeight}px`;
    }
  }
  /** Let the user drag a rectangle of neurons on `canvas` (grid = the map's pixels). */
  installAreaSelection(canvas, mapBox) {
    const overlay = el("div", { class: "area-overlay" });
    overlay.hidden = true;
    mapBox.appendChild(overlay);
    this.overlays.push(overlay);
    const cellAt = (ev) => {
      const r = canvas.getBoundingClientRect();
      const col = Math.floor((ev.clientX - r.left) / r.width * canvas.width);
      const row = Math.floor((ev.clientY - r.top) / r.height * canvas.height);
      return [Math.min(canvas.height - 1, Math.max(0, row)), Math.min(canvas.width - 1, Math.max(0, col))];
    };
    let start = null;
    canvas.addEventListener("pointerdown", (ev) => {
      start = cellAt(ev);
      canvas.setPointerCapture(ev.pointerId);
    });
    canvas.addEventListener("pointermove", (ev) => {
      if (!start) return;
      const [r, c] = cellAt(ev);
      this.selection = {
        area: [Math.min(start[0], r), Math.min(start[1], c), Math.max(start[0], r) + 1, Math.max(start[1], c) + 1],
        grid: [canvas.height, canvas.width]
      };
      this.showSelection();
    });
    canvas.addEventListener("pointerup", () => {
      const brushed = start !== null && this.selection !== null;
      start = null;
      if (brushed) this.last?.onArea?.(this.selection);
    });
  }
  /** Draw the panel; resolves when every activation map is painted, with the number painted. */
  async render(input) {
    this.last = input;
    clear(this.element);
    this.selection = null;
    this.overlays.length = 0;
    const { data } = input;
    const cards = el("div", { class: "neuron-examples" });
    const pending = [];
    for (const ex of data.examples) {
      const name = input.names.get(ex.example) ?? `#${ex.example}`;
      const readout = el("div", { class: "readout" }, ["hover the map for values"]);
      const canvas = el("canvas", { class: "activation-canvas", width: 1, height: 1, style: `width:${MAP_SIZE}px;height:${MAP_SIZE}px` });
      const mapBox = el("div", { class: "activation-map", "data-example": ex.example });
      const card = el("div", { class: "neuron-example", style: `border-top-color:${input.colors.get(ex.example) ?? "#9e9e9e"}` }, [
        el("div", { class: "card-title" }, [name]),
        el("div", { class: "pair" }, [
          el("img", { src: input.imageUrl(ex.example), alt: `image of ${name}`, width: MAP_SIZE, height: MAP_SIZE }),
          mapBox
        ]),
        el("div", { class: "values" }, [
          `max activation ${formatValue(ex.max_activation)} · gate ${formatValue(ex.gate)} · `,
          el("span", { class: ex.in_datapath ? "in-path" : "out-path" }, [ex.in_datapath ? "in datapath" : "not in datapath"]),
          ...ex.stability === void 0 || ex.stability === null ? [] : [
            el(
              "span",
              { class: "stability", title: "fraction of the extraction's starts whose datapath selected this feature map" },
              [` · selected by ${Math.round(ex.stability * 100)} % of starts`]
            )
          ]
        ]),
        readout
      ]);
      cards.appendChild(card);
      if (ex.activation_map === null) {
        mapBox.appendChild(el("div", { class: "note" }, ["no activation map logged for this feature map"]));
        continue;
      }
      mapBox.appendChild(canvas);
      pending.push(getRangedImage(ex.activation_map).then(
        ({ bitmap, range }) => ({ canvas, mapBox, readout, bitmap, range: range ?? [0, 1], sent: range !== null }),
        (err) => {
          mapBox.replaceChildren(el("div", { class: "error" }, [`activation map: ${err.message}`]));
          return null;
        }
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
          `#${f.rank + 1}: ${formatValue(f.activation)} · image ${f.reference_image}`
        ])
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
      ...input.actions ? [input.actions] : [],
      el("div", { class: "scale-row" }, [ramp, el("label", { class: "note" }, [toggle, " each map on its own scale"])]),
      el("div", { class: "neuron-row" }, [cards, input.aside ?? null]),
      el("h4", {}, ["Learned features (top-activating reference images: receptive-field box, and its crop)"]),
      features
    );
    const loaded = (await Promise.all(pending)).filter((m) => m !== null);
    const common = loaded.length ? sharedRange(loaded.map((m) => m.range)) : [0, 1];
    for (const m of loaded) {
      const scale = this.shared ? common : m.range;
      const levels = paintGreen(m.canvas, m.bitmap, m.range, scale);
      m.canvas.dataset.scale = scale.join(",");
      this.installAreaSelection(m.canvas, m.mapBox);
      const [lo, hi] = m.range;
      m.mapBox.appendChild(el("div", { class: "range" }, [m.sent ? `range ${formatValue(lo)} … ${formatValue(hi)}` : "range not sent (grey levels 0…1)"]));
      m.canvas.addEventListener("mousemove", (ev) => {
        const r = m.canvas.getBoundingClientRect();
        const col = Math.min(m.canvas.width - 1, Math.floor((ev.clientX - r.left) / r.width * m.canvas.width));
        const row = Math.min(m.canvas.height - 1, Math.floor((ev.clientY - r.top) / r.height * m.canvas.height));
        m.readout.textContent = `(${row}, ${col}): activation ${formatValue(dequantise(levels[row * m.canvas.width + col], lo, hi))}`;
      });
    }
    ramp.append(
      "activation: ",
      el("span", { class: "ramp-number lo" }, [formatValue(common[0])]),
      el("span", { class: "ramp" }),
      el("span", { class: "ramp-number hi" }, [formatValue(common[1])]),
      this.shared ? " — one scale for every example's map · drag on a map to select an area of neurons" : " — (shared range; each map is now drawn on its own range, shown under it) · drag on a map to select an area of neurons"
    );
    return loaded.length;
  }
  /**
   * The panel as a PNG (title, each example's image and activation map with its values,
   * the colour ramp with its numbers), or null before a feature map is shown.
   */
  async exportPng(title) {
    const cards = [...this.element.querySelectorAll(".neuron-example")];
    if (cards.length === 0) return null;
    const cell = MAP_SIZE * 2 + 24;
    const width = Math.max(520, cards.length * cell + 16);
    const height = 64 + MAP_SIZE + 56;
    const canvas = document.createElement("canvas");
    canvas.width = width * 2;
    canvas.height = height * 2;
    const ctx = canvas.getContext("2d");
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
    return await new Promise((resolve) => canvas.toBlob((b) => resolve(b), "image/png"));
  }
};

// src/treemapGeometry.ts
function bottomFill(cell, value, maxValue, inset = 0) {
  if (value === null || !Number.isFinite(value) || !(maxValue > 0)) return null;
  const innerW = cell.dx - 2 * inset;
  const innerH = cell.dy - 2 * inset;
  if (innerW <= 0 || innerH <= 0) return null;
  const height = Math.min(1, Math.abs(value) / maxValue) * innerH;
  if (height <= 0) return null;
  return { x: cell.x + inset, y: cell.y + cell.dy - inset - height, width: innerW, height };
}
function maxAbsContribution(cells) {
  let max = 0;
  for (const c of cells) {
    if (c.contribution !== null && Number.isFinite(c.contribution)) max = Math.max(max, Math.abs(c.contribution));
  }
  return max;
}
var MIN_STABILITY_OPACITY = 0.25;
function stabilityOpacity(stability) {
  if (!stability || stability.length === 0) return 1;
  const lowest = Math.min(...stability.map((v) => Number.isFinite(v) ? Math.min(1, Math.max(0, v)) : 1));
  return MIN_STABILITY_OPACITY + (1 - MIN_STABILITY_OPACITY) * lowest;
}
function membersKey(members) {
  return [...members].sort((a, b) => a - b).join(",");
}

// src/treemapView.ts
var INSET = 1;
var TreemapView = class {
  constructor() {
    this.svg = null;
    this.tooltip = el("div", { class: "tooltip", role: "tooltip" });
    this.tooltip.hidden = true;
    this.element = el("div", { class: "treemap" });
  }
  /** Draw the treemap; returns the number of cells drawn. */
  render(input) {
    clear(this.element);
    this.tooltip.hidden = true;
    const { data } = input;
    const [a, b] = input.diff;
    const nameOf = (i) => input.names.get(i) ?? `#${i}`;
    const maxContribution = maxAbsContribution(data.cells);
    const svg = svgEl("svg", { class: "treemap-svg", width: data.width, height: data.height, viewBox: `0 0 ${data.width} ${data.height}` }, [
      svgEl("defs", {}, [
        svgEl("pattern", { id: "aevis-dots", width: 4, height: 4, patternUnits: "userSpaceOnUse" }, [
          svgEl("circle", { cx: 2, cy: 2, r: 1.1, fill: "#37474f" })
        ])
      ]),
      svgEl("rect", { x: 0, y: 0, width: data.width, height: data.height, fill: "#ffffff" })
    ]);
    const cellsLayer = svgEl("g", { class: "cells" });
    for (const cell of data.cells) {
      const stability = cell.stability ?? null;
      const g = svgEl("g", {
        class: "treemap-cell",
        "data-channel": cell.channel,
        "data-members": membersKey(cell.members),
        cursor: "pointer",
        ...stability ? { "data-stability": stability.join(","), opacity: stabilityOpacity(stability).toFixed(3) } : {}
      });
      const selected = cell.channel === input.selectedChannel;
      g.appendChild(svgEl("rect", {
        x: cell.x + INSET / 2,
        y: cell.y + INSET / 2,
        width: Math.max(0, cell.dx - INSET),
        height: Math.max(0, cell.dy - INSET),
        fill: "#f5f5f5",
        stroke: selected ? "#d84315" : "#ffffff",
        "stroke-width": selected ? 2 : INSET
      }));
      const solid = bottomFill(cell, cell.activation_diff, data.max_abs_activation_diff, INSET);
      if (solid && cell.activation_diff !== null) {
        const stronger = cell.activation_diff >= 0 ? a : b;
        g.appendChild(svgEl("rect", { class: "fill-activation", x: solid.x, y: solid.y, width: solid.width, height: solid.height, fill: input.colors.get(stronger) ?? "#757575", "fill-opacity": 0.75 }));
      }
      const dotted = bottomFill(cell, cell.contribution, maxContribution, INSET);
      if (dotted) {
        g.appendChild(svgEl("rect", { class: "fill-contribution", x: dotted.x + dotted.width / 2, y: dotted.y, width: dotted.width / 2, height: dotted.height, fill: "url(#aevis-dots)" }));
      }
      const members = cell.members.map(nameOf).join(", ");
      g.appendChild(svgTitle(`feature map ${cell.channel}`));
      g.addEventListener("mousemove", (ev) => {
        this.showTooltip(ev, [
          `feature map ${cell.channel}`,
          `in datapaths: ${members}`,
          `activation ${nameOf(a)} − ${nameOf(b)}: ${formatValue(cell.activation_diff)}`,
          `contribution: ${cell.contribution === null ? "not computed" : formatValue(cell.contribution)}`,
          stability ? `stability (share of the starts that selected it): ${cell.members.map((m, k) => `${nameOf(m)} ${Math.round(100 * stability[k])} %`).join(", ")}` : "stability: one start (not computed)"
        ]);
      });
      g.addEventListener("mouseleave", () => this.tooltip.hidden = true);
      g.addEventListener("click", () => input.onOpenChannel(cell.channel));
      cellsLayer.appendChild(g);
    }
    svg.appendChild(cellsLayer);
    const outlines = svgEl("g", { class: "sets", "pointer-events": "none" });
    for (const set of data.sets) {
      if (!set.shared) continue;
      outlines.appendChild(svgEl("rect", {
        class: "treemap-set",
        "data-members": membersKey(set.members),
        x: set.x,
        y: set.y,
        width: set.dx,
        height: set.dy,
        fill: "none",
        stroke: "#424242",
        "stroke-width": 1.5,
        "stroke-dasharray": "5 3"
      }, [svgTitle(set.label)]));
    }
    for (const box of data.containers) {
      outlines.appendChild(svgEl("rect", {
        class: "treemap-container datapath-outline",
        "data-example": box.example,
        x: box.x + 1,
        y: box.y + 1,
        width: Math.max(0, box.dx - 2),
        height: Math.max(0, box.dy - 2),
        fill: "none",
        stroke: input.colors.get(box.example) ?? "#616161",
        "stroke-width": 2.5
      }, [svgTitle(`${box.label}'s datapath`)]));
    }
    const owners = new Set(data.containers.map((c) => c.example));
    const inset = 4;
    for (const example of data.examples) {
      if (owners.has(example)) continue;
      for (const set of data.sets.filter((r) => r.members.includes(example))) {
        outlines.appendChild(svgEl("rect", {
          class: "datapath-outline inner",
          "data-example": example,
          x: set.x + inset,
          y: set.y + inset,
          width: Math.max(0, set.dx - 2 * inset),
          height: Math.max(0, set.dy - 2 * inset),
          fill: "none",
          stroke: input.colors.get(example) ?? "#616161",
          "stroke-width": 2.5,
          "stroke-dasharray": "6 3"
        }, [svgTitle(`${nameOf(example)}'s datapath: no maps of its own, all shared (${set.label})`)]));
      }
    }
    const labels = svgEl("g", { class: "region-labels", "pointer-events": "none" });
    for (const set of data.sets) {
      const text = set.shared ? set.label : `${set.label} only`;
      const fits = Math.floor((set.dx - 8) / 6.4);
      if (fits < 4 || set.dy < 16) continue;
      labels.appendChild(svgEl("text", {
        class: "region-label",
        "data-members": membersKey(set.members),
        x: set.x + 5,
        y: set.y + 13,
        "font-size": 11,
        "font-weight": 500,
        fill: "#212121",
        stroke: "#ffffff",
        "stroke-width": 3,
        "paint-order": "stroke",
        "font-family": "Roboto, sans-serif"
      }, [text.length > fits ? text.slice(0, fits - 1) + "…" : text]));
    }
    svg.append(outlines, labels);
    this.svg = svg;
    const containerRows = data.examples.map((example) => {
      const box = data.containers.find((c) => c.example === example);
      const kept = data.sets.filter((r) => r.members.includes(example)).reduce((n, r) => n + r.size, 0);
      const what = box ? `${box.set_size} feature map${box.set_size === 1 ? "" : "s"} in its datapath` : kept > 0 ? `${kept} feature map${kept === 1 ? "" : "s"}, no maps of its own (all shared; dashed inner outline)` : "keeps no feature map of this layer";
      return el("li", { "data-example": example }, [
        el("span", { class: "swatch", style: `border-color:${input.colors.get(example) ?? "#616161"}${box ? "" : ";border-style:dashed"}` }),
        `${nameOf(example)}: ${what}`
      ]);
    });
    const sharedRows = data.sets.filter((set) => set.shared).map(
      (set) => el("li", {}, [el("span", { class: "swatch", style: "border-color:#424242;border-style:dashed" }), `${set.label}: ${set.size} shared`])
    );
    const legend = el("div", { class: "treemap-legend" }, [
      el("div", {}, [
        el("span", { class: "fill-key solid" }),
        `solid fill: activation difference ${nameOf(a)} − ${nameOf(b)} (max of each feature map; colour of the datapath where it is larger; full cell = ${formatValue(data.max_abs_activation_diff)})`
      ]),
      el("div", {}, [
        el("span", { class: "fill-key dotted" }),
        input.contributionLabel && maxContribution > 0 ? `dotted fill (right half): ${input.contributionLabel} (full = ${formatValue(maxContribution)})` : "dotted fill: contribution (none computed for this layer; use “Contribution to prediction” or trace from a feature map)"
      ]),
      ...data.cells.some((c) => c.stability) ? [el("div", { class: "stability-key" }, [
        el("span", { class: "fill-key faded" }),
        "faded cell: not every start of the extraction selected this map (opacity falls with the lowest share of starts among its datapaths; opaque = all starts)"
      ])] : [],
      el("ul", { class: "set-list" }, [...containerRows, ...sharedRows])
    ]);
    if (data.cells.length === 0) {
      this.svg = null;
      this.element.append(el("div", { class: "note empty-layer" }, ["None of the chosen datapaths keeps a feature map of this layer."]), legend);
      return 0;
    }
    this.element.append(el("div", { class: "treemap-canvas" }, [svg, this.tooltip]), legend);
    return data.cells.length;
  }
  showTooltip(ev, lines) {
    clear(this.tooltip);
    lines.forEach((line, i) => this.tooltip.appendChild(el("div", { class: i === 0 ? "tooltip-title" : "" }, [line])));
    const box = (this.tooltip.parentElement ?? this.element).getBoundingClientRect();
    this.tooltip.style.left = `${Math.min(ev.clientX - box.left + 14, Math.max(0, box.width - 240))}px`;
    this.tooltip.style.top = `${ev.clientY - box.top + 14}px`;
    this.tooltip.hidden = false;
  }
  /** The treemap as drawn now with `title` above and its legend below (for export), or null before the first render. */
  snapshot(title) {
    if (!this.svg) return null;
    const w = Number(this.svg.getAttribute("width"));
    const h = Number(this.svg.getAttribute("height"));
    const lines = [...this.element.querySelectorAll(".treemap-legend > div, .treemap-legend li")].map((n) => n.textContent ?? "");
    const head = 28;
    const total = head + h + 10 + 16 * lines.length;
    const out = svgEl("svg", { width: w, height: total, viewBox: `0 0 ${w} ${total}` }, [
      svgEl("rect", { x: 0, y: 0, width: w, height: total, fill: "#ffffff" }),
      svgEl("text", { class: "export-title", x: 4, y: 19, "font-size": 14, "font-weight": 500, fill: "#212121", "font-family": "Roboto, sans-serif" }, [title])
    ]);
    const body = this.svg.cloneNode(true);
    body.setAttribute("y", String(head));
    out.appendChild(body);
    const legend = svgEl("g", { class: "export-legend", "font-size": 11, fill: "#424242", "font-family": "Roboto, sans-serif" });
    lines.forEach((line, i) => legend.appendChild(svgEl("text", { x: 4, y: head + h + 20 + 16 * i }, [line])));
    out.appendChild(legend);
    return out;
  }
};

// src/selection.ts
function groupAnalyses(run) {
  const byName = /* @__PURE__ */ new Map();
  for (const entry of run.analyses) {
    let choice = byName.get(entry.name);
    if (!choice) {
      choice = { name: entry.name, methods: [], steps: {}, stepsWithModel: {} };
      byName.set(entry.name, choice);
    }
    if (!choice.methods.includes(entry.method)) choice.methods.push(entry.method);
    choice.steps[entry.method] = [.../* @__PURE__ */ new Set([...choice.steps[entry.method] ?? [], ...entry.steps])].sort((a, b) => a - b);
    if (entry.steps_with_model) {
      choice.stepsWithModel[entry.method] = [.../* @__PURE__ */ new Set([...choice.stepsWithModel[entry.method] ?? [], ...entry.steps_with_model])].sort((a, b) => a - b);
    }
  }
  return [...byName.values()];
}
function resolveSelection(runs, asked) {
  const state = { ...asked };
  const warnings = [];
  let run = runs.find((r) => r.run === state.run);
  if (state.run !== void 0 && !run) {
    warnings.push(`Run "${state.run}" has no AEVis data (it is not in this logdir, or it logged no add_analysis summaries); showing another run.`);
  }
  run = run ?? runs.find((r) => r.analyses.length > 0) ?? runs[0];
  if (state.run !== void 0 && state.run !== run.run) dropBelow(state, "run");
  state.run = run.run;
  const analyses = groupAnalyses(run);
  if (analyses.length === 0) {
    dropBelow(state, "run");
    return { state, warnings };
  }
  let analysis = analyses.find((a) => a.name === state.analysis);
  if (state.analysis !== void 0 && !analysis) warnings.push(`Analysis "${state.analysis}" is not in run "${run.run}"; showing "${analyses[0].name}".`);
  analysis = analysis ?? analyses[0];
  if (state.analysis !== void 0 && state.analysis !== analysis.name) dropBelow(state, "analysis");
  state.analysis = analysis.name;
  if (state.method === void 0) {
    state.method = defaultMethod(analysis);
  } else if (!analysis.methods.includes(state.method)) {
    warnings.push(`Method "${state.method}" was not logged for "${analysis.name}"; showing ${defaultMethod(analysis)}.`);
    state.method = defaultMethod(analysis);
    delete state.layer;
    delete state.channel;
  }
  const steps = analysis.steps[state.method] ?? [];
  if (state.step === void 0 || !steps.includes(state.step)) {
    if (state.step !== void 0) warnings.push(`Step ${state.step} was not logged for "${analysis.name}" (${state.method}); showing step ${steps[steps.length - 1]}.`);
    state.step = steps[steps.length - 1];
  }
  return { state, warnings };
}
function defaultMethod(analysis) {
  return analysis.methods.includes("constrained") ? "constrained" : analysis.methods[0];
}
var BELOW = {
  run: ["analysis", "method", "step", "examples", "layer", "channel", "diff", "expanded", "view"],
  analysis: ["method", "step", "examples", "layer", "channel", "diff", "expanded", "view"]
};
function dropBelow(state, level) {
  for (const key of BELOW[level]) delete state[key];
}
var MAX_RIVER_DATAPATHS = 16;
function resolveExamples(asked, available, story = null) {
  const known = new Set(available);
  const chosen = [...new Set((asked ?? []).filter((i) => known.has(i)))].slice(0, MAX_RIVER_DATAPATHS);
  if (chosen.length >= 2) return chosen;
  if (story && story.length === 3 && story.every((i) => known.has(i)) && new Set(story).size === 3) return [...story].sort((a, b) => a - b);
  return available.slice(0, MAX_RIVER_DATAPATHS);
}
function resolveDiff(asked, examples) {
  if (asked && asked[0] !== asked[1] && examples.includes(asked[0]) && examples.includes(asked[1])) return asked;
  return [examples[0], examples[1] ?? examples[0]];
}

// src/app.ts
var GRAPH_NODE_BUDGET = 80;
var TREEMAP_MAX_EXAMPLES = 5;
var TAB = "aevis";
function hostWindow() {
  try {
    if (window.parent !== window && window.parent.location.href) return window.parent;
  } catch {
  }
  return window;
}
function describeError(err) {
  if (err instanceof ApiError) return `The ${err.route} route answered${err.status ? ` ${err.status}` : ""}: ${err.message}`;
  return err instanceof Error ? err.message : String(err);
}
function chainGraph(layers) {
  return {
    nodes: layers.map((name, i) => ({ id: name, label: name, op: "call_module", group: null, gated_layer: i })),
    edges: layers.slice(1).map((name, i) => ({ source: layers[i], target: name })),
    groups: []
  };
}
var App = class {
  constructor(root) {
    this.runs = [];
    this.manifest = null;
    /** analysisKey() of the loaded manifest. */
    this.manifestKey = "";
    this.graph = null;
    this.river = null;
    this.expanded = /* @__PURE__ */ new Set();
    /** Contribution scores shown as dotted fills in the treemap of `layer` (per channel). */
    this.contribution = null;
    /** Set once the first river is drawn (the performance marks are made once). */
    this.riverShown = false;
    /** Incremented per analysis load; stale answers are dropped. */
    this.generation = 0;
    this.host = hostWindow();
    this.controls = el("div", { class: "controls" });
    this.messages = el("div", { class: "messages", role: "status" });
    this.networkPanel = el("section", { class: "panel network-panel", hidden: "" });
    this.treemapPanel = el("section", { class: "panel treemap-panel", hidden: "" });
    this.neuronPanel = el("section", { class: "panel neuron-panel", hidden: "" });
    this.networkView = new NetworkView();
    this.treemapView = new TreemapView();
    this.neuronView = new NeuronView();
    this.contributionSection = el("section", { class: "panel contribution-panel", hidden: "" });
    this.contributionPanel = new ContributionPanel();
    this.legend = el("div", { class: "legend" });
    this.summary = el("div", { class: "summary" });
    this.networkOptions = el("span", { class: "network-options" });
    /** Display names of gated layers and groups (distinctive end of the module path). */
    this.names = /* @__PURE__ */ new Map();
    /** The river is drawn with the view from the URL once; later draws keep the current view. */
    this.viewRestored = false;
    this.viewTimer = null;
    this.treemapHead = el("div", { class: "panel-head" });
    /** A refusal shown once in the treemap's head, next to the menus that caused it. */
    this.treemapNotice = null;
    // ------------------------------------------------------------- contribution (paper Sec. 5.4)
    /** "preview": a quadratic answer first (about a second), then refined by SGD (the accurate one). */
    this.mode = "preview";
    /** The examples a contribution is computed for; null: the default (the adversarial datapath alone). */
    this.contributionExamples = null;
    this.state = readViewState(this.host.location.hash);
    root.classList.add("aevis");
    root.append(this.controls, this.messages, this.networkPanel, this.treemapPanel, this.neuronPanel, this.contributionSection);
    this.contributionSection.append(this.contributionPanel.element);
    const exportButtons = (what, name) => [
      this.button("Export SVG", () => this.exportView(what, name, "svg")),
      this.button("Export PNG", () => this.exportView(what, name, "png"))
    ];
    this.networkPanel.append(
      el("div", { class: "panel-head" }, [
        el("h2", {}, ["Datapath river, Eq. 9 diff and model graph"]),
        this.networkOptions,
        el("span", { class: "spacer" }),
        this.button("Fit", () => this.networkView.fit()),
        this.button("+", () => this.networkView.zoomBy(1.4)),
        this.button("−", () => this.networkView.zoomBy(1 / 1.4)),
        ...exportButtons(() => this.networkView.snapshot(), () => fileStem([this.state.analysis ?? "", "network"]))
      ]),
      this.summary,
      this.legend,
      this.networkView.element
    );
    this.treemapPanel.append(this.treemapHead, this.treemapView.element);
    this.neuronPanel.append(this.neuronView.element);
    this.host.addEventListener("hashchange", () => this.onExternalHashChange());
    followTheme(root, this.host);
  }
  async start() {
    const linked = this.state.run !== void 0 && this.state.analysis !== void 0 && this.state.method !== void 0 && this.state.step !== void 0 ? this.requestAnalysis() : null;
    try {
      const answer = await getJson("runs");
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
  message(kind, text) {
    for (const shown of this.messages.children) {
      if (shown.textContent === text && shown.classList.contains(kind)) return shown;
    }
    const box = el("div", { class: `message ${kind}` }, [text]);
    this.messages.appendChild(box);
    return box;
  }
  button(text, onClick) {
    const b = el("button", { type: "button" }, [text]);
    b.addEventListener("click", onClick);
    return b;
  }
  /** TensorBoard's own run list (runs of every plugin), or [] when it cannot be read. */
  async tensorboardRuns() {
    try {
      const runs = await getJson("../../runs");
      return Array.isArray(runs) ? runs.map(String) : [];
    } catch {
      return [];
    }
  }
  async showNoRuns() {
    const others = await this.tensorboardRuns();
    const how = "Log an analysis with summary_writers.add_analysis(writer, name, analysis, step), or run `aevis demo --logdir <logdir>`, then reload.";
    if (others.length === 0) this.message("info", `No runs with AEVis data in this logdir. ${how}`);
    else this.message("info", `No AEVis data: TensorBoard has ${others.length} run(s) (${others.slice(0, 8).join(", ")}${others.length > 8 ? ", …" : ""}) but none contains an AEVis analysis. ${how}`);
  }
  // ------------------------------------------------------------- selection
  currentRun() {
    return this.runs.find((r) => r.run === this.state.run);
  }
  currentAnalysis() {
    const run = this.currentRun();
    return run ? groupAnalyses(run).find((a) => a.name === this.state.analysis) : void 0;
  }
  /** Repair the state to valid choices, telling the user what was not found. */
  resolveSelection() {
    const { state, warnings } = resolveSelection(this.runs, this.state);
    this.state = state;
    for (const warning of warnings) this.message("warning", warning);
  }
  saveState() {
    const hash = writeViewState(this.host.location.hash, this.state, TAB);
    if (hash === this.host.location.hash) return;
    const loc = this.host.location;
    this.host.history.replaceState(this.host.history.state, "", `${loc.pathname}${loc.search}${hash}`);
  }
  onExternalHashChange() {
    const next = readViewState(this.host.location.hash);
    if (JSON.stringify(next) === JSON.stringify(this.state)) return;
    this.state = next;
    clear(this.messages);
    this.resolveSelection();
    void this.loadAnalysis();
  }
  change(patch, reset) {
    Object.assign(this.state, patch);
    for (const key of reset) delete this.state[key];
    clear(this.messages);
    this.resolveSelection();
    void this.loadAnalysis();
  }
  renderControls() {
    clear(this.controls);
    const run = this.currentRun();
    const analysis = this.currentAnalysis();
    const resetBelowRun = ["analysis", "method", "step", "examples", "layer", "channel", "diff", "expanded", "view"];
    this.controls.appendChild(select(
      "Run",
      this.runs.map((r) => ({ value: r.run, text: r.analyses.length ? r.run : `${r.run} (no AEVis data)` })),
      this.state.run ?? "",
      (v) => this.change({ run: v }, resetBelowRun),
      "run"
    ));
    if (!run || !analysis) return;
    this.controls.appendChild(select(
      "Analysis",
      groupAnalyses(run).map((a) => ({ value: a.name, text: a.name })),
      analysis.name,
      (v) => this.change({ analysis: v }, resetBelowRun.slice(2)),
      "analysis"
    ));
    this.controls.appendChild(select(
      "Method",
      analysis.methods.map((m) => ({ value: m, text: m === "dgr" ? "DGR (baseline)" : m })),
      this.state.method ?? "",
      (v) => this.change({ method: v }, ["step", "layer", "channel", "view"]),
      "method"
    ));
    const steps = analysis.steps[this.state.method ?? ""] ?? [];
    if (steps.length > 1) {
      this.controls.appendChild(select(
        "Step",
        steps.map((s) => ({ value: String(s), text: String(s) })),
        String(this.state.step),
        (v) => this.change({ step: Number(v) }, ["layer", "channel", "view"]),
        "step"
      ));
    }
    if (this.manifest && this.manifestKey === this.analysisKey()) this.controls.appendChild(this.datapathPicker(this.manifest.examples));
  }
  datapathPicker(examples) {
    const chosen = new Set(this.state.examples ?? []);
    const box = el("div", { class: "datapaths", role: "group", "aria-label": "datapaths to compare" });
    const colors = this.exampleColors();
    examples.forEach((e) => {
      const input = el("input", { type: "checkbox", name: "datapath", value: e.index });
      input.checked = chosen.has(e.index);
      input.addEventListener("change", () => {
        const next = examples.map((x) => x.index).filter((i) => i === e.index ? input.checked : chosen.has(i));
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
  analysisKey() {
    return JSON.stringify([this.state.run, this.state.analysis, this.state.method, this.state.step]);
  }
  analysisParams() {
    return { run: this.state.run, analysis: this.state.analysis, method: this.state.method, step: this.state.step };
  }
  // ------------------------------------------------------------- network level
  /** Ask for the three answers the river needs (manifest, graph, river), all at once. */
  requestAnalysis() {
    const params = this.analysisParams();
    const asked = this.state.examples;
    const key = JSON.stringify([this.analysisKey(), asked ?? null]);
    const manifest = getJson("analysis", params);
    const graph = getJson("graph", params).then(
      (answer) => ({ graph: answer, error: null }),
      (error) => ({ graph: null, error })
    );
    const river = getJson("river", { ...params, examples: asked?.join(","), normalization: this.distance() }).catch((err) => {
      if (asked === void 0) throw err;
      return null;
    });
    manifest.catch(() => void 0);
    river.catch(() => void 0);
    return { key, asked, manifest, graph, river };
  }
  async loadAnalysis(prefetched = null) {
    const generation = ++this.generation;
    const run = this.currentRun();
    const wanted = JSON.stringify([this.analysisKey(), this.state.examples ?? null]);
    const requests = run && this.currentAnalysis() ? prefetched?.key === wanted ? prefetched : this.requestAnalysis() : null;
    const sameAnalysis = this.manifest !== null && this.manifestKey === this.analysisKey();
    this.renderControls();
    if (!sameAnalysis) {
      this.networkPanel.hidden = true;
      this.treemapPanel.hidden = true;
      this.neuronPanel.hidden = true;
      this.contributionSection.hidden = true;
      this.contributionPanel.hide();
    }
    if (!run || !requests) {
      this.saveState();
      if (run) this.message("info", `Run "${run.run}" has no AEVis data: it logged no add_analysis summaries.`);
      return;
    }
    const params = this.analysisParams();
    const loading = sameAnalysis ? el("div") : this.message("info", "Loading the analysis…");
    let manifest;
    let river;
    let graph;
    try {
      manifest = await requests.manifest;
      const dm = manifest.diverging_merging;
      const story = dm ? [dm.adversarial, dm.source, dm.target] : null;
      const examples = resolveExamples(requests.asked, manifest.examples.map((e) => e.index), story);
      const dropped = (requests.asked ?? []).filter((i) => !examples.includes(i));
      if (dropped.length) {
        this.message("warning", `Datapath${dropped.length > 1 ? "s" : ""} ${dropped.join(", ")} of the link ${dropped.length > 1 ? "are" : "is"} not in this analysis (examples 0..${manifest.examples.length - 1}); showing ${examples.join(", ")}.`);
      }
      if (requests.asked === void 0 && story && manifest.examples.length > 3 && examples.length === 3) {
        this.message("info", `Showing the paper's triplet: the adversarial example, its source and the representative target (Sec. 6.2.1) of ${manifest.examples.filter((e) => e.role === "target").length} target images. Tick more under Datapaths to compare them.`);
      }
      const first = await requests.river;
      const same = first !== null && JSON.stringify(first.paths.map((p) => p.example).sort()) === JSON.stringify([...examples].sort()) && (first.normalization ?? "l2") === this.distance();
      river = same ? first : await getJson("river", { ...params, examples: examples.join(","), normalization: this.distance() });
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
    this.state.diff = this.state.diff && resolveDiff(this.state.diff, this.state.examples);
    this.renderControls();
    this.saveState();
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
      this.riverShown = true;
      performance.mark("aevis-river-drawn");
      afterNextFrame(() => performance.mark("aevis-river-painted"));
    }
    if (this.state.layer) void this.loadTreemap();
  }
  /** The layer distance of the river and the chart: RMS unless the URL asks for the paper's L2. */
  distance() {
    return this.state.distance ?? "rms";
  }
  renderSummary() {
    const m = this.manifest;
    const layerName = (l) => l === null ? "none" : this.names.get(m.layers[l]?.name) ?? m.layers[l]?.name ?? String(l);
    const dm = m.diverging_merging;
    const parts = [`${m.layers.length} gated layers · method ${m.method} · threshold ${formatValue(m.threshold)} · river layout ${this.river.layout === "rule" ? "rule (Sec. 5.2)" : "least squares"}`];
    if (dm) {
      parts.push(dm.detected ? `diverging at ${layerName(dm.diverging_layer)}, merging at ${layerName(dm.merging_layer)}` : "no diverging/merging pattern detected (Eq. 10)");
    }
    const preds = m.examples.filter((e) => (this.state.examples ?? []).includes(e.index)).map((e) => `${e.name}: ${e.class_name} (${formatValue(e.confidence)})${e.label_preserved ? "" : " — datapath does not keep the label"}`);
    clear(this.summary);
    this.summary.append(el("div", {}, [parts.join(" · ")]), el("div", {}, [`predictions: ${preds.join("; ")}`]));
    const provenance = m.params?.provenance;
    if (provenance && typeof provenance === "object") {
      const rows = Object.entries(provenance).map(([k, v]) => `${k}: ${String(v)}`);
      this.summary.appendChild(el("div", { class: "provenance" }, [`how the examples were chosen — ${rows.join(" · ")}`]));
    }
    if (!m.has_model) this.summary.appendChild(el("div", { class: "note no-model" }, [this.noModelText()]));
  }
  /** Why contribution analysis is unavailable here, and where it is available. */
  noModelText() {
    const withModel = this.currentAnalysis()?.stepsWithModel[this.state.method ?? ""];
    const base = `Step ${this.state.step} saved no model, so contribution analysis is unavailable here`;
    if (withModel === void 0) return `${base} (log the analysis with model=... to enable it).`;
    if (withModel.length === 0) return `${base}; no step of this analysis saved one (log it with model=...).`;
    return `${base}; steps with a saved model: ${withModel.join(", ")}.`;
  }
  drawNetwork(keepLayer = null) {
    const river = this.river;
    const manifest = this.manifest;
    clear(this.legend);
    const colors = this.exampleColors();
    river.paths.forEach((p) => {
      this.legend.appendChild(el("span", { class: "item", "data-example": p.example }, [
        el("span", { class: "swatch", style: `background:${colors.get(p.example) ?? "#757575"};width:22px` }),
        datapathLabel(p.name, p.role)
      ]));
    });
    const unit = river.normalization === "rms" ? "RMS gate distance (L2 / √C_l)" : "L2 gate distance (paper)";
    this.legend.append(
      el("span", { class: "item span-key" }, [el("span", { class: "span-swatch" }), "diverging → merging span"]),
      el("span", { class: "item marker-key diverging" }, ["▲ diverging"]),
      el("span", { class: "item marker-key merging" }, ["▲ merging"]),
      el("span", { class: "item note" }, [`river: vertical gap between curves = ${unit} between datapaths at that layer (wider curves lie under thinner ones). Chart: Eq. 9 diff, last r layers shaded. Hover a layer for values, click it for its feature maps.`])
    );
    clear(this.networkOptions);
    this.networkOptions.appendChild(select("Layer distance", [
      { value: "rms", text: "RMS: L2 / √channels (compares layers)" },
      { value: "l2", text: "L2 (paper, grows with width)" }
    ], this.distance(), (v) => {
      this.state.distance = v;
      void this.reloadRiver();
    }, "distance"));
    const restore = !this.viewRestored && this.state.view ? { k: this.state.view[0], x: this.state.view[1], y: this.state.view[2] } : null;
    const keep = this.viewRestored && keepLayer === null ? this.networkView.view() : null;
    this.viewRestored = true;
    const analysisTitle = `${this.state.analysis ?? ""} — ${manifest.method}, step ${this.state.step} (${river.normalization === "rms" ? "RMS" : "L2"} distance)`;
    this.networkView.render({
      graph: this.graph,
      layerNames: manifest.layers.map((l) => l.name),
      shortNames: this.names,
      river,
      detection: manifest.diverging_merging ?? null,
      colors,
      expanded: this.expanded,
      selectedLayer: this.state.layer ?? null,
      title: analysisTitle,
      onToggleGroup: (group) => {
        const inGroup = this.graph.groups.find((g) => g.id === group)?.gated_layers ?? [];
        this.expanded = toggleGroup(this.graph, this.expanded, group);
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
      onViewChange: (t) => this.rememberView(t)
    }, restore ?? keep, keepLayer);
  }
  /** Keep the network view's pan and zoom in the URL (written once the user pauses). */
  rememberView(t) {
    this.state.view = [t.k, t.x, t.y];
    if (this.viewTimer !== null) clearTimeout(this.viewTimer);
    this.viewTimer = setTimeout(() => {
      this.viewTimer = null;
      this.saveState();
    }, 300);
  }
  /** Ask for the river again (another layer distance) and redraw it in place. */
  async reloadRiver() {
    const generation = this.generation;
    try {
      const river = await getJson("river", { ...this.analysisParams(), examples: (this.state.examples ?? []).join(","), normalization: this.distance() });
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
  exampleNames() {
    return new Map((this.manifest?.examples ?? []).map((e) => [e.index, e.name]));
  }
  /** Colour of each compared datapath, as in the river (role colour, ranked within the role). */
  exampleColors() {
    const examples = this.manifest?.examples ?? [];
    const chosen = examples.filter((e) => (this.state.examples ?? []).includes(e.index));
    const colors = pathColors(chosen.map((e) => e.role));
    return new Map(chosen.map((e, k) => [e.index, colors[k]]));
  }
  async loadTreemap() {
    const generation = this.generation;
    const layer = this.state.layer;
    const manifest = this.manifest;
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
      this.manifest.has_model ? this.contributionRunner("Contribution to prediction", () => ({ body: { target: "prediction", earlier_layer: layer }, label: "contribution to the prediction" })).element : el("span", { class: "note" }, [this.noModelText()]),
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
      })
    );
    if (this.treemapNotice) {
      this.treemapHead.appendChild(el("div", { class: "message warning treemap-notice" }, [this.treemapNotice]));
      this.treemapNotice = null;
    }
    if ((this.state.examples ?? []).length > TREEMAP_MAX_EXAMPLES) {
      this.treemapHead.appendChild(el("div", { class: "note" }, [`The treemap compares the first ${TREEMAP_MAX_EXAMPLES} chosen datapaths.`]));
    }
    const width = Math.max(360, Math.min(900, Math.floor(this.treemapPanel.getBoundingClientRect().width - 30) || 600));
    if (!this.treemapView.element.firstChild) this.treemapView.element.append(el("div", { class: "note" }, ["Loading the treemap…"]));
    let data;
    try {
      data = await getJson("treemap", {
        ...this.analysisParams(),
        layer,
        examples: examples.join(","),
        diff: diff.join(","),
        width,
        height: 360
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
      data,
      names,
      colors: this.exampleColors(),
      diff,
      selectedChannel: this.state.channel ?? null,
      contributionLabel: contribution?.label ?? null,
      onOpenChannel: (channel) => {
        this.state.channel = channel;
        this.saveState();
        void this.loadTreemap();
      }
    });
    if (this.state.channel !== void 0) void this.loadNeuron();
    else this.neuronPanel.hidden = true;
  }
  treemapTitle(layer, diff) {
    const names = this.exampleNames();
    return `${this.state.analysis ?? ""} — feature maps of ${layer} (${this.state.method}, step ${this.state.step}); fill: ${names.get(diff[0]) ?? diff[0]} − ${names.get(diff[1]) ?? diff[1]}`;
  }
  setDiff(diff) {
    if (diff[0] === diff[1]) {
      this.treemapNotice = "A − B needs two different datapaths: choose another B (or A). The treemap keeps the last valid pair.";
      void this.loadTreemap();
      return;
    }
    this.state.diff = diff;
    this.saveState();
    void this.loadTreemap();
  }
  // ------------------------------------------------------------- neuron level
  async loadNeuron() {
    const generation = this.generation;
    const layer = this.state.layer;
    const channel = this.state.channel;
    this.neuronPanel.hidden = false;
    if (!this.neuronView.element.firstChild) this.neuronView.element.append(el("div", { class: "note" }, [`Loading feature map ${channel}…`]));
    let data;
    try {
      data = await getJson("neuron", { ...this.analysisParams(), layer, channel });
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
      imageUrl: (example) => routeUrl("image", { ...this.analysisParams(), example })
    });
  }
  contributionMode() {
    return select("Contribution mode", [
      { value: "preview", text: "quadratic preview, then SGD" },
      { value: "sgd", text: "SGD (accurate)" },
      { value: "quadratic", text: "quadratic (fast)" }
    ], this.mode, (v) => {
      this.mode = v;
      for (const other of document.querySelectorAll('select[name="contribution-mode"]')) other.value = v;
    }, "contribution-mode");
  }
  /** The examples to compute a contribution for: the user's choice, else the first adversarial datapath compared. */
  contributionFor() {
    const compared = this.state.examples ?? [];
    const chosen = (this.contributionExamples ?? []).filter((i) => compared.includes(i));
    if (chosen.length) return chosen;
    const adversarial = compared.filter((i) => this.manifest?.examples.find((e) => e.index === i)?.role === "adversarial");
    return (adversarial.length ? adversarial : compared).slice(0, 1);
  }
  /** Checkboxes choosing the examples of a contribution (one alone possible). */
  contributionChooser() {
    const chosen = new Set(this.contributionFor());
    const names = this.exampleNames();
    const box = el("span", { class: "contribution-examples", role: "group", "aria-label": "examples the contribution is computed for" });
    for (const i of (this.state.examples ?? []).slice(0, TREEMAP_MAX_EXAMPLES)) {
      const input = el("input", { type: "checkbox", name: "contribution-example", value: i });
      input.checked = chosen.has(i);
      input.addEventListener("change", () => {
        const next = [...box.querySelectorAll("input:checked")].map((x) => Number(x.value));
        if (next.length === 0) {
          input.checked = true;
          return;
        }
        this.contributionExamples = next;
        for (const other of document.querySelectorAll('input[name="contribution-example"]')) other.checked = next.includes(Number(other.value));
      });
      box.appendChild(el("label", {}, [input, names.get(i) ?? `#${i}`]));
    }
    return el("span", { class: "control" }, [el("span", {}, ["Compute for"]), box]);
  }
  /** A run control: [examples] [mode] [button] [progress]; `request()` says what to compute. */
  contributionRunner(text, request2) {
    const status = el("span", { class: "contribution-status note", role: "status" });
    const button = el("button", { type: "button", class: "contribution-run" }, [text]);
    const run = () => {
      if (button.disabled) return;
      const { body, label } = request2();
      void this.computeContribution(body, label, button, status);
    };
    button.addEventListener("click", run);
    return { element: el("span", { class: "contribution-controls" }, [this.contributionChooser(), this.contributionMode(), button, status]), run };
  }
  /** "Trace from layer [earlier]": contributions of an earlier layer to this feature map or its brushed area (runs on mouse-up). */
  contributionTracer(layer, channel) {
    const manifest = this.manifest;
    const index = manifest.layers.findIndex((l) => l.name === layer);
    if (!manifest.has_model) return { element: el("div", { class: "note" }, [this.noModelText()]), run: null };
    if (index <= 0) return { element: el("div", { class: "note" }, ["the first gated layer has no earlier gated layer to trace contributions from"]), run: null };
    const earlier = manifest.layers.slice(0, index).map((l) => ({ value: l.name, text: this.names.get(l.name) ?? l.name }));
    let from = earlier[earlier.length - 1].value;
    const runner = this.contributionRunner("Trace", () => {
      const chosen = this.neuronView.area();
      const where = chosen ? ` (area rows ${chosen.area[0]}–${chosen.area[2] - 1}, columns ${chosen.area[1]}–${chosen.area[3] - 1})` : "";
      return {
        body: { target: "feature_map", target_layer: layer, channel, earlier_layer: from, ...chosen ? { area: chosen.area, area_grid: chosen.grid } : {} },
        label: `contribution to feature map ${channel} of ${layer}${where}`
      };
    });
    return {
      element: el("div", { class: "contribution-tracer" }, [
        select("Trace contributions from", earlier, from, (v) => from = v, "earlier-layer"),
        runner.element,
        el("span", { class: "note" }, ["brush an area on a map: tracing starts on mouse-up"])
      ]),
      run: runner.run
    };
  }
  /**
   * POST the contribution request (in "preview" mode: quadratic, shown, then SGD, shown);
   * progress next to `button` (disabled meanwhile); the ranked result in its panel.
   */
  async computeContribution(request2, label, button, status) {
    const key = this.analysisKey();
    const examples = this.contributionFor();
    const modes = this.mode === "preview" ? ["quadratic", "sgd"] : [this.mode];
    button.disabled = true;
    const started = performance.now();
    let doing = "";
    const show = () => status.textContent = `${doing} ${((performance.now() - started) / 1e3).toFixed(0)} s`;
    const tick = setInterval(show, 1e3);
    try {
      for (const [k, mode] of modes.entries()) {
        doing = modes.length > 1 && k > 0 ? "Preview shown; refining with SGD…" : `Computing (${mode})…`;
        show();
        let answer;
        try {
          answer = await postJson("contribution", { ...this.analysisParams(), ...request2, examples, mode });
        } catch (err) {
          status.textContent = "";
          this.message("error", describeError(err));
          return;
        }
        if (key !== this.analysisKey()) return;
        this.showContribution(answer, examples, modes.length > 1 && k === 0 ? `${label} — quadratic preview, SGD refining…` : label);
      }
      status.textContent = `done in ${((performance.now() - started) / 1e3).toFixed(1)} s`;
    } finally {
      clearInterval(tick);
      button.disabled = false;
    }
  }
  /** Show a contribution answer: the ranked panel, and the dotted fills of its layer's treemap. */
  showContribution(answer, examples, label) {
    const key = this.analysisKey();
    for (const warning of answer.warnings ?? []) this.message("warning", warning);
    answer.examples = answer.examples ?? examples;
    this.contribution = { key, layer: answer.earlier_layer, scores: answer.scores, label: `${label}, ${answer.mode}, ${formatValue(answer.seconds)} s` };
    const params = this.analysisParams();
    const earlier = answer.earlier_layer;
    const beside = !this.neuronPanel.hidden && this.neuronView.element.contains(this.contributionPanel.element);
    if (!beside) this.contributionSection.append(this.contributionPanel.element);
    this.contributionSection.hidden = beside;
    this.contributionPanel.render({
      answer,
      label,
      names: this.exampleNames(),
      colors: this.exampleColors(),
      activationUrl: (channel, example) => routeUrl("activation_map", { ...params, layer: earlier, channel, example }),
      learnedUrl: (channel) => routeUrl("learned_feature", { ...params, layer: earlier, channel, rank: 0 }),
      onOpen: (channel) => {
        this.state.layer = earlier;
        this.state.channel = channel;
        this.saveState();
        this.drawNetwork();
        void this.loadTreemap();
      }
    });
    if (this.state.layer === earlier) void this.loadTreemap();
  }
  // ------------------------------------------------------------- export
  async exportView(what, name, format) {
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
};

// src/styles.ts
var STYLES = `
:root { color-scheme: light; }
body { margin: 0; font-family: Roboto, "Helvetica Neue", Arial, sans-serif; font-size: 13px; color: #212121; background: #f5f5f5; }
.aevis { padding: 12px 16px 32px; }
.aevis h2 { font-size: 15px; font-weight: 500; margin: 0 0 8px; }
.aevis h3 { font-size: 14px; font-weight: 500; margin: 4px 0 8px; }
.aevis h4 { font-size: 13px; font-weight: 500; margin: 12px 0 6px; }
.controls { display: flex; flex-wrap: wrap; gap: 12px; align-items: flex-end; margin-bottom: 8px; }
.control { display: flex; flex-direction: column; gap: 2px; font-size: 11px; color: #616161; }
.control select { font-size: 13px; padding: 3px 4px; min-width: 120px; }
.datapaths { display: flex; flex-wrap: wrap; gap: 4px 12px; align-items: center; }
.datapaths label { display: inline-flex; gap: 4px; align-items: center; font-size: 12px; color: #212121; }
.swatch { display: inline-block; width: 14px; height: 4px; border-radius: 2px; background: #9e9e9e; border: 2px solid transparent; box-sizing: border-box; }
.treemap-legend .swatch { height: 10px; background: transparent; }
.messages > div { padding: 8px 12px; margin: 6px 0; border-radius: 4px; white-space: pre-wrap; }
.message.error { background: #ffebee; color: #b71c1c; border: 1px solid #ef9a9a; }
.message.warning { background: #fff8e1; color: #6d4c00; border: 1px solid #ffe082; }
.message.info { background: #e3f2fd; color: #0d47a1; border: 1px solid #90caf9; }
.panel { background: #fff; border-radius: 4px; box-shadow: 0 1px 3px rgba(0,0,0,0.15); padding: 10px 12px; margin-top: 10px; position: relative; }
.panel-head { display: flex; align-items: center; gap: 8px; flex-wrap: wrap; margin-bottom: 6px; }
.panel-head .spacer { flex: 1; }
button { font: inherit; font-size: 12px; padding: 3px 9px; border: 1px solid #bdbdbd; border-radius: 3px; background: #fafafa; cursor: pointer; }
button:hover { background: #eeeeee; }
.legend { display: flex; flex-wrap: wrap; gap: 4px 14px; font-size: 12px; align-items: center; }
.legend .item { display: inline-flex; gap: 5px; align-items: center; }
.legend .marker-key { font-weight: 500; }
.legend .marker-key.diverging { color: #c62828; }
.legend .marker-key.merging { color: #2e7d32; }
.network { position: relative; border: 1px solid #e0e0e0; border-radius: 3px; overflow: hidden; }
.network-svg { display: block; cursor: grab; user-select: none; touch-action: none; }
.minimap { position: absolute; right: 8px; bottom: 8px; border: 1px solid #bdbdbd; background: #fafafa; box-shadow: 0 1px 3px rgba(0,0,0,0.2); cursor: crosshair; }
.graph-node:hover rect { filter: brightness(0.95); }
.tooltip { position: absolute; z-index: 5; pointer-events: none; background: rgba(33,33,33,0.92); color: #fff; padding: 6px 8px; border-radius: 4px; font-size: 12px; max-width: 320px; }
.tooltip table { border-collapse: collapse; margin-top: 4px; }
.tooltip td, .tooltip th { padding: 1px 6px 1px 0; text-align: left; font-weight: normal; }
.tooltip th { color: #bdbdbd; }
.tooltip .num { text-align: right; font-variant-numeric: tabular-nums; }
.tooltip-title { font-weight: 500; }
.tooltip-hint { color: #bdbdbd; margin-top: 4px; }
.tooltip-marker.diverging { color: #ef9a9a; }
.tooltip-marker.merging { color: #a5d6a7; }
.treemap-canvas { position: relative; display: inline-block; }
.treemap-legend { font-size: 12px; margin-top: 6px; }
.treemap-legend .set-list { margin: 4px 0 0; padding: 0; list-style: none; display: flex; flex-wrap: wrap; gap: 2px 14px; }
.treemap-legend li { display: inline-flex; gap: 5px; align-items: center; }
.fill-key { display: inline-block; width: 12px; height: 12px; margin-right: 5px; vertical-align: -2px; border: 1px solid #9e9e9e; }
.fill-key.solid { background: #ff7f0e; opacity: 0.75; }
.fill-key.faded { background: #ff7f0e; opacity: 0.35; }
.fill-key.dotted { background-image: radial-gradient(#37474f 1.1px, transparent 1.2px); background-size: 4px 4px; }
.neuron-examples { display: flex; flex-wrap: wrap; gap: 10px; }
.neuron-example { border: 1px solid #e0e0e0; border-top: 4px solid #9e9e9e; border-radius: 3px; padding: 6px; }
.neuron-example .pair { display: flex; gap: 6px; }
.activation-map { position: relative; }
.activation-canvas { cursor: crosshair; touch-action: none; }
.area-overlay { position: absolute; border: 2px solid #d84315; background: rgba(216,67,21,0.15); pointer-events: none; box-sizing: border-box; }
.neuron-row { display: flex; gap: 14px; align-items: flex-start; flex-wrap: wrap; }
.neuron-row .neuron-examples { flex: 0 1 auto; }
.neuron-row .contribution-result { flex: 1 1 460px; min-width: 420px; max-height: 520px; overflow-y: auto; }
.contribution-controls { display: flex; gap: 8px; align-items: flex-end; flex-wrap: wrap; margin: 4px 0 8px; }
.neuron-example img, .activation-canvas { image-rendering: pixelated; border: 1px solid #eeeeee; }
.card-title { font-weight: 500; margin-bottom: 4px; }
.values, .readout, .range { font-size: 11px; color: #616161; margin-top: 3px; }
.in-path { color: #2e7d32; }
.out-path { color: #9e9e9e; }
.learned-features { display: flex; flex-wrap: wrap; gap: 8px; }
.learned-feature { margin: 0; font-size: 11px; text-align: center; }
.learned-feature .pair { display: flex; gap: 4px; align-items: flex-start; justify-content: center; }
.reference { position: relative; overflow: hidden; line-height: 0; }
.reference img { display: block; }
.learned-feature img { image-rendering: pixelated; }
.learned-feature img.crop { object-fit: contain; background: #fafafa; }
.rf-box { position: absolute; border: 2px solid #ff6f00; box-shadow: 0 0 0 1px rgba(255,255,255,0.8); pointer-events: none; box-sizing: border-box; }
.legend-ramp .ramp { display: inline-block; width: 90px; height: 10px; vertical-align: -1px; background: linear-gradient(to right, rgb(247,252,245), rgb(199,233,192), rgb(116,196,118), rgb(35,139,69), rgb(0,68,27)); }
.note { color: #757575; font-size: 12px; }
.error { color: #b71c1c; }
.summary { font-size: 12px; color: #424242; margin: 2px 0 6px; }
.scale-row { display: flex; gap: 16px; align-items: center; flex-wrap: wrap; font-size: 12px; }
.ramp-number { font-variant-numeric: tabular-nums; margin: 0 4px; }
.neuron-actions { display: flex; gap: 12px; align-items: flex-end; flex-wrap: wrap; }
.neuron-row { display: flex; gap: 14px; align-items: flex-start; flex-wrap: wrap; }
.neuron-row .neuron-examples { flex: 0 1 auto; }
.neuron-row .contribution-result { flex: 1 1 460px; min-width: 420px; max-height: 520px; overflow-y: auto; }
.contribution-controls { display: inline-flex; gap: 8px; align-items: flex-end; flex-wrap: wrap; }
.contribution-tracer { display: flex; gap: 10px; align-items: flex-end; flex-wrap: wrap; margin: 4px 0 8px; }
.contribution-examples { display: inline-flex; gap: 8px; font-size: 12px; color: #212121; }
.contribution-status { min-width: 110px; }
.contribution-list { list-style: none; padding: 0; margin: 6px 0 0; }
.contribution-entry { display: grid; grid-template-columns: 30px 56px 70px 48px 1fr 42px 42px; gap: 8px; align-items: center; padding: 3px 4px; border-bottom: 1px solid #eeeeee; cursor: pointer; }
.contribution-entry:hover, .contribution-entry:focus { background: rgba(255,152,0,0.1); }
.contribution-entry .score-bar { height: 8px; background: #eeeeee; border-radius: 4px; overflow: hidden; }
.contribution-entry .score-bar > span { display: block; height: 100%; background: #ef6c00; }
.contribution-entry .score { font-variant-numeric: tabular-nums; text-align: right; }
.chip { display: inline-block; border: 2px solid #9e9e9e; border-radius: 9px; padding: 0 6px; margin-right: 4px; font-size: 11px; }
.chip.none { border-style: dashed; color: #757575; }
.thumb { width: 40px; height: 40px; image-rendering: pixelated; border: 1px solid #e0e0e0; display: inline-flex; align-items: center; justify-content: center; color: #9e9e9e; }
.score-meaning { font-size: 12px; margin: 4px 0; }
.aevis.dark .contribution-entry { border-color: #555; }
.aevis.dark .contribution-examples { color: #e0e0e0; }
.provenance { color: #37474f; font-style: italic; }
.network-options .control { flex-direction: row; align-items: center; gap: 6px; }
.network-options select { min-width: 0; }
.legend .span-swatch { display: inline-block; width: 22px; height: 12px; background: rgba(255,193,7,0.35); border: 1px solid #ffa000; border-radius: 3px; }
.legend .note { flex-basis: 100%; }
button:disabled { opacity: 0.55; cursor: progress; }
/* Dark mode (TensorBoard's body.dark-mode, mirrored as .dark on our root). */
body:has(.aevis.dark) { background: #303030; color: #e0e0e0; }
.aevis.dark { color: #e0e0e0; }
.aevis.dark .panel { background: #3a3a3a; box-shadow: 0 1px 3px rgba(0,0,0,0.6); }
.aevis.dark .control, .aevis.dark .note, .aevis.dark .summary, .aevis.dark .provenance, .aevis.dark .values, .aevis.dark .readout, .aevis.dark .range { color: #bdbdbd; }
.aevis.dark .datapaths label { color: #e0e0e0; }
.aevis.dark button, .aevis.dark select { background: #4a4a4a; color: #eeeeee; border-color: #666; }
.aevis.dark .network { border-color: #555; }
.aevis.dark .network-svg .background { fill: #262626; }
.aevis.dark .network-svg .chart-frame { fill: #2f2f2f; }
.aevis.dark .network-svg .graph-node rect { fill: #333; }
.aevis.dark .network-svg .graph-node.group rect { fill: #2c2f45; }
.aevis.dark .network-svg text { fill: #e0e0e0; }
.aevis.dark .network-svg .story-label { fill: #ffca28; }
.aevis.dark .network-svg .diff-curve { stroke: #e0e0e0; }
.aevis.dark .minimap { background: #333; }
.aevis.dark .minimap > rect:first-of-type { fill: #333; }
.aevis.dark .treemap-canvas svg > rect:first-child, .aevis.dark .treemap-svg .background { fill: #262626; }
.aevis.dark .neuron-example { border-color: #555; }
.aevis.dark .message.info { background: #1a3550; color: #bbdefb; border-color: #2f5f8f; }
.aevis.dark .message.warning { background: #4a3b00; color: #ffe082; border-color: #7a6100; }
.aevis.dark .message.error { background: #4a1a1a; color: #ffcdd2; border-color: #8f2f2f; }
`;

// src/index.ts
async function render() {
  performance.mark("aevis-start");
  const style = document.createElement("style");
  style.textContent = STYLES;
  document.head.appendChild(style);
  const root = document.createElement("div");
  document.body.appendChild(root);
  await new App(root).start();
}
export {
  render
};
