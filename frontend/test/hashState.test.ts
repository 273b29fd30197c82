import { test } from "node:test";
import assert from "node:assert/strict";
import { parseHash, readViewState, writeViewState, type ViewState } from "../src/hashState";

test("parseHash follows TensorBoard's #tab&key=value format", () => {
  assert.deepEqual(parseHash("#aevis&foo=bar&x=1%262"), { tab: "aevis", entries: [["foo", "bar"], ["x", "1&2"]] });
  assert.deepEqual(parseHash(""), { tab: null, entries: [] });
});

test("a full state round-trips through the hash", () => {
  const state: ViewState = {
    run: "runs/a b&c=d",
    analysis: "cat->espresso",
    method: "dgr",
    step: 12,
    examples: [0, 2, 1],
    layer: "layer3.1",
    channel: 17,
    diff: [1, 0],
    expanded: ["layer1", "layer1.0"],
  };
  const hash = writeViewState("#aevis", state, "aevis");
  assert.deepEqual(readViewState(hash), state);
  // TensorBoard's own parser splits on & and =; every pair must have exactly one "=".
  for (const part of hash.slice(1).split("&").slice(1)) assert.equal(part.split("=").length, 2);
});

test("writing keeps the tab and foreign keys, and replaces our old keys", () => {
  const first = writeViewState("#aevis&smoothing=0.6", { run: "a", step: 1 }, "aevis");
  const second = writeViewState(first, { run: "b" }, "aevis");
  const parsed = parseHash(second);
  assert.equal(parsed.tab, "aevis");
  assert.deepEqual(parsed.entries, [["smoothing", "0.6"], ["aevis.run", "b"]]);
  assert.equal(parseHash(writeViewState("", {}, "aevis")).tab, "aevis");
});

test("malformed values are dropped instead of thrown", () => {
  const state = readViewState("#aevis&aevis.step=-1&aevis.examples=0,x&aevis.channel=1.5&aevis.diff=1&aevis.run=%E0%A4%A&aevis.layer=l1");
  assert.deepEqual(state, { run: "%E0%A4%A", layer: "l1" });
});
