import { test } from "node:test";
import assert from "node:assert/strict";
import { ROLE_COLORS, pathColors } from "../src/colors";

test("each role has its own colour and the first path of a role gets it", () => {
  assert.equal(new Set(Object.values(ROLE_COLORS)).size, 3);
  assert.deepEqual(pathColors(["source", "adversarial", "target"]), [ROLE_COLORS.source, ROLE_COLORS.adversarial, ROLE_COLORS.target]);
});

test("several paths of one role get distinct colours", () => {
  const colors = pathColors(["target", "target", "target", "target"]);
  assert.equal(new Set(colors).size, 4);
  assert.equal(colors[0], ROLE_COLORS.target);
  for (const c of colors) assert.match(c, /^#[0-9a-f]{6}$/);
});
