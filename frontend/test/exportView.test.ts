import { test } from "node:test";
import assert from "node:assert/strict";
import { fileStem } from "../src/exportView";

test("fileStem makes a safe file name from the view's parts", () => {
  assert.equal(fileStem(["cat->espresso", "layer3.1", "treemap"]), "cat--espresso_layer3.1_treemap");
  assert.equal(fileStem(["../../etc/passwd"]), "etc-passwd");
  assert.equal(fileStem(["///"]), "aevis");
});
