import { test } from "node:test";
import assert from "node:assert/strict";
import { verdict } from "../src/diffChart";

const name = (l: number) => `L${l}`;

test("a detected pattern names the diverging and merging layers", () => {
  const v = verdict([0, -1, 0, 1, 2, 3], 3, true, 1, 5, name);
  assert.equal(v.detected, true);
  assert.equal(v.rises, 3);
  assert.match(v.text, /diverges at L1, merges at L5/);
});

test("no pattern says which of the last r layers fall and names the best candidate", () => {
  const v = verdict([0, 1, 3, 2, 1], 2, false, 0, 2, name);
  assert.equal(v.rises, 0);
  assert.match(v.text, /falls at 2 of the last 2 layers \(L3, L4\)/);
  assert.match(v.text, /Best candidate: diverging L0, merging L2/);
  const never = verdict([-1, -2, -1.5], 2, false, null, null, name);
  assert.match(never.text, /never closer to the target/);
});
