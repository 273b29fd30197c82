import { test } from "node:test";
import assert from "node:assert/strict";
import { groupAnalyses, resolveDiff, resolveExamples, resolveSelection } from "../src/selection";
import type { RunListing } from "../src/types";

const runs: RunListing[] = [
  { run: "empty", analyses: [] },
  {
    run: "demo",
    analyses: [
      { name: "cat->dog", method: "dgr", steps: [0] },
      { name: "cat->dog", method: "constrained", steps: [10, 0] },
      { name: "panda", method: "dgr", steps: [3, 7] },
    ],
  },
];

test("groupAnalyses merges the (name, method) entries of a run", () => {
  assert.deepEqual(groupAnalyses(runs[1]), [
    { name: "cat->dog", methods: ["dgr", "constrained"], steps: { dgr: [0], constrained: [0, 10] }, stepsWithModel: {} },
    { name: "panda", methods: ["dgr"], steps: { dgr: [3, 7] }, stepsWithModel: {} },
  ]);
});

test("an empty state picks the first run with data, constrained, the last step", () => {
  const { state, warnings } = resolveSelection(runs, {});
  assert.deepEqual(state, { run: "demo", analysis: "cat->dog", method: "constrained", step: 10 });
  assert.deepEqual(warnings, []);
});

test("a valid state is kept as asked, with the rest of the view", () => {
  const asked = { run: "demo", analysis: "panda", method: "dgr", step: 3, layer: "l2", channel: 4, examples: [1, 0] };
  assert.deepEqual(resolveSelection(runs, asked), { state: asked, warnings: [] });
});

test("unknown names are replaced and reported; lower levels are dropped", () => {
  const r = resolveSelection(runs, { run: "gone", analysis: "panda", layer: "l", channel: 1 });
  assert.deepEqual(r.state, { run: "demo", analysis: "cat->dog", method: "constrained", step: 10 });
  assert.equal(r.warnings.length, 1);
  assert.match(r.warnings[0], /Run "gone" has no AEVis data/);
  const m = resolveSelection(runs, { run: "demo", analysis: "panda", method: "constrained", step: 99, layer: "l" });
  assert.deepEqual(m.state, { run: "demo", analysis: "panda", method: "dgr", step: 7 });
  assert.equal(m.warnings.length, 2);
  const s = resolveSelection(runs, { run: "demo", analysis: "panda", method: "dgr", step: 4, layer: "l" });
  assert.deepEqual(s.state, { run: "demo", analysis: "panda", method: "dgr", step: 7, layer: "l" });
  assert.match(s.warnings[0], /Step 4 was not logged/);
});

test("a link naming only a layer and channel keeps them under the default choices", () => {
  assert.deepEqual(resolveSelection(runs, { layer: "l1", channel: 3 }).state, {
    run: "demo", analysis: "cat->dog", method: "constrained", step: 10, layer: "l1", channel: 3,
  });
});

test("a run without analyses keeps only the run", () => {
  assert.deepEqual(resolveSelection([runs[0]], { analysis: "x", step: 1 }).state, { run: "empty" });
});

test("resolveExamples keeps two or more known indices, else all (capped at 16)", () => {
  assert.deepEqual(resolveExamples([2, 0, 2, 9], [0, 1, 2]), [2, 0]);
  assert.deepEqual(resolveExamples([2, 9], [0, 1, 2]), [0, 1, 2]);
  assert.deepEqual(resolveExamples(undefined, [...Array(20).keys()]), [...Array(16).keys()]);
});

test("resolveDiff keeps a valid pair and falls back to the first two", () => {
  assert.deepEqual(resolveDiff([2, 0], [0, 1, 2]), [2, 0]);
  assert.deepEqual(resolveDiff([1, 1], [0, 1, 2]), [0, 1]);
  assert.deepEqual(resolveDiff([5, 0], [0, 1]), [0, 1]);
  assert.deepEqual(resolveDiff(undefined, [3]), [3, 3]);
});

test("groupAnalyses keeps the steps with a saved model when the server lists them", () => {
  const run: RunListing = { run: "r", analyses: [{ name: "a", method: "constrained", steps: [0, 5, 9], steps_with_model: [9, 0] }] };
  assert.deepEqual(groupAnalyses(run)[0].stepsWithModel, { constrained: [0, 9] });
});

test("resolveExamples opens on the paper's triplet when nothing is asked", () => {
  assert.deepEqual(resolveExamples(undefined, [0, 1, 2, 3, 4, 5], [1, 0, 4]), [0, 1, 4]);
  // an asked list wins; a triplet naming unknown or repeated examples is ignored
  assert.deepEqual(resolveExamples([2, 3], [0, 1, 2, 3], [1, 0, 3]), [2, 3]);
  assert.deepEqual(resolveExamples(undefined, [0, 1, 2], [0, 0, 2]), [0, 1, 2]);
  assert.deepEqual(resolveExamples(undefined, [0, 1, 2], [0, 1, 7]), [0, 1, 2]);
});
