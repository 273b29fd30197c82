import { test } from "node:test";
import assert from "node:assert/strict";
import { centreOn, fitTransform, panBy, visibleContent, zoomAt } from "../src/panZoom";

const apply = (t: { k: number; x: number; y: number }, [cx, cy]: [number, number]) => [cx * t.k + t.x, cy * t.k + t.y];

test("zoomAt keeps the content point under the cursor fixed and clamps k", () => {
  const t0 = { k: 1.5, x: 20, y: -10 };
  const t1 = zoomAt(t0, 2, 200, 100, 0.1, 10);
  const content: [number, number] = [(200 - t0.x) / t0.k, (100 - t0.y) / t0.k];
  const [sx, sy] = apply(t1, content);
  assert.ok(Math.abs(sx - 200) < 1e-9 && Math.abs(sy - 100) < 1e-9);
  assert.equal(t1.k, 3);
  assert.equal(zoomAt(t0, 100, 0, 0, 0.1, 4).k, 4);
});

test("fitTransform puts the whole content inside the viewport, centred", () => {
  const content = { x: 10, y: 20, width: 1000, height: 100 };
  const t = fitTransform(content, 500, 300, 10, 2);
  const [x0, y0] = apply(t, [10, 20]);
  const [x1, y1] = apply(t, [1010, 120]);
  assert.ok(x0 >= 10 - 1e-9 && x1 <= 490 + 1e-9 && y0 >= 0 && y1 <= 300);
  assert.ok(Math.abs((x0 + x1) / 2 - 250) < 1e-9 && Math.abs((y0 + y1) / 2 - 150) < 1e-9);
  assert.equal(fitTransform({ x: 0, y: 0, width: 10, height: 10 }, 500, 300, 10, 2).k, 2);
});

test("visibleContent inverts the transform; centreOn centres a point; panBy shifts", () => {
  const t = { k: 2, x: -100, y: 40 };
  assert.deepEqual(visibleContent(t, 400, 200), { x: 50, y: -20, width: 200, height: 100 });
  const c = centreOn(t, 300, 50, 400, 200);
  assert.deepEqual(apply(c, [300, 50]), [200, 100]);
  assert.deepEqual(panBy(t, 5, -5), { k: 2, x: -95, y: 35 });
});
