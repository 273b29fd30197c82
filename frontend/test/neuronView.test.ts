import assert from "node:assert/strict";
import { test } from "node:test";

import { boxPercent } from "../src/neuronView";

test("boxPercent places a receptive-field box in percent of the image", () => {
  // rows 10..30, columns 20..60 of a 200 x 100 (width x height) image
  assert.deepEqual(boxPercent([10, 20, 30, 60], 200, 100), [10, 10, 20, 20]);
});

test("boxPercent clips a box that reaches past the image edges", () => {
  // a receptive field centred near the top-left corner extends beyond the image
  const [left, top, width, height] = boxPercent([-8, -4, 24, 12], 32, 64);
  assert.equal(left, 0);
  assert.equal(top, 0);
  assert.equal(width, (100 * 12) / 32);
  assert.equal(height, (100 * 24) / 64);
  // entirely outside: an empty box at the edge
  assert.deepEqual(boxPercent([70, 40, 90, 50], 32, 64), [100, 100, 0, 0]);
});
