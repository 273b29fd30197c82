import { test } from "node:test";
import assert from "node:assert/strict";
import { bottomFill, maxAbsContribution, membersKey, MIN_STABILITY_OPACITY, stabilityOpacity } from "../src/treemapGeometry";

test("bottomFill grows from the bottom in proportion to |value| / max", () => {
  const cell = { x: 10, y: 20, dx: 40, dy: 100 };
  assert.deepEqual(bottomFill(cell, 1.5, 3), { x: 10, y: 70, width: 40, height: 50 });
  assert.deepEqual(bottomFill(cell, -3, 3), { x: 10, y: 20, width: 40, height: 100 });
  assert.deepEqual(bottomFill(cell, 9, 3, 2), { x: 12, y: 22, width: 36, height: 96 });
  assert.equal(bottomFill(cell, 0, 3), null);
  assert.equal(bottomFill(cell, null, 3), null);
  assert.equal(bottomFill(cell, 1, 0), null);
  assert.equal(bottomFill({ x: 0, y: 0, dx: 2, dy: 2 }, 1, 1, 1), null);
});

test("maxAbsContribution ignores missing values", () => {
  assert.equal(maxAbsContribution([{ contribution: null }, { contribution: -0.7 }, { contribution: 0.2 }]), 0.7);
  assert.equal(maxAbsContribution([{ contribution: null }]), 0);
});

test("membersKey is order-free", () => {
  assert.equal(membersKey([2, 0, 1]), "0,1,2");
});

test("stabilityOpacity follows the least stable member, opaque without stability", () => {
  assert.equal(stabilityOpacity(null), 1);
  assert.equal(stabilityOpacity(undefined), 1);
  assert.equal(stabilityOpacity([1, 1]), 1);
  assert.equal(stabilityOpacity([1, 0]), MIN_STABILITY_OPACITY);
  assert.ok(Math.abs(stabilityOpacity([1, 0.5]) - (MIN_STABILITY_OPACITY + (1 - MIN_STABILITY_OPACITY) / 2)) < 1e-12);
  assert.ok(stabilityOpacity([1 / 3]) < stabilityOpacity([2 / 3]));
});
