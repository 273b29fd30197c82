import { test } from "node:test";
import assert from "node:assert/strict";
import { datapathLabel, shortNames } from "../src/labels";

test("shortNames keeps the distinctive end of each module path", () => {
  const names = shortNames(["model._blocks.13", "model._blocks.14", "model._blocks.11._bn2", "model._conv_head", "layer3.2", "layer2.2"]);
  assert.equal(names.get("model._blocks.11._bn2"), "blocks.11.bn2");
  assert.equal(names.get("model._blocks.13"), "blocks.13");
  assert.equal(names.get("model._conv_head"), "model.conv_head");
  assert.equal(names.get("layer3.2"), "layer3.2");
  // an ending shared by two paths grows until it is unique
  const deep = shortNames(["layer3.2.conv1", "layer2.2.conv1", "features"]);
  assert.equal(deep.get("layer3.2.conv1"), "layer3.2.conv1");
  assert.equal(deep.get("features"), "features");
});

test("datapathLabel never repeats the role", () => {
  assert.equal(datapathLabel("cat (adversarial)", "adversarial"), "cat (adversarial)");
  assert.equal(datapathLabel("cat", "source"), "cat — source (normal)");
});
