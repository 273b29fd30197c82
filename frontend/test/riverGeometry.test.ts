import { test } from "node:test";
import assert from "node:assert/strict";
import { layerAnchors, riverPoints, smoothPath } from "../src/riverGeometry";

test("layers sharing a collapsed node spread evenly over its width", () => {
  const single = { x: 10, y: 50, width: 20, height: 10 };
  const group = { x: 100, y: 60, width: 90, height: 10 };
  const boxes = [single, group, group, group];
  const anchors = layerAnchors(5, (l) => boxes[l]);
  assert.deepEqual(anchors, [[10, 50], [70, 60], [100, 60], [130, 60], null]);
});

test("river points shift across the band by y - 0.5 and skip unanchored layers", () => {
  const anchors: Array<[number, number] | null> = [[0, 100], null, [50, 100]];
  assert.deepEqual(riverPoints(anchors, [0, 0.3, 1], 40), [[0, 80], [50, 120]]);
  assert.deepEqual(riverPoints(anchors, [0.5], 40), [[0, 100]]);
});

test("smoothPath passes through every point", () => {
  const pts: Array<[number, number]> = [[0, 0], [10, 5], [20, -5], [30, 0]];
  const d = smoothPath(pts);
  assert.ok(d.startsWith("M0,0 C"));
  const ends = [...d.matchAll(/C[^ ]+ [^ ]+ ([-\d.]+),([-\d.]+)/g)].map((m) => [Number(m[1]), Number(m[2])]);
  assert.deepEqual(ends, pts.slice(1));
  assert.equal(smoothPath([]), "");
  assert.equal(smoothPath([[1, 2]]), "M1,2");
});

test("a straight run of points gives a straight curve (control points on the line)", () => {
  const d = smoothPath([[0, 7], [10, 7], [20, 7]]);
  const ys = [...d.matchAll(/,([-\d.]+)/g)].map((m) => Number(m[1]));
  assert.ok(ys.every((y) => y === 7));
});
