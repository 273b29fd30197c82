import { test } from "node:test";
import assert from "node:assert/strict";
import { dequantise, formatValue, greenLookupTable, greenRamp, linearScale, parseRangeHeader } from "../src/scales";

test("linearScale maps the domain ends onto the range ends and interpolates", () => {
  const s = linearScale([2, 6], [100, 0]);
  assert.equal(s(2), 100);
  assert.equal(s(6), 0);
  assert.equal(s(3), 75);
  assert.equal(linearScale([1, 1], [0, 10])(5), 5);
});

test("greenRamp is light at 0, dark at 1, and monotonically darker", () => {
  const lum = ([r, g, b]: number[]) => 0.2126 * r + 0.7152 * g + 0.0722 * b;
  assert.deepEqual(greenRamp(0), [247, 252, 245]);
  assert.deepEqual(greenRamp(1), [0, 68, 27]);
  let previous = Infinity;
  for (let i = 0; i <= 100; i++) {
    const l = lum(greenRamp(i / 100));
    assert.ok(l <= previous + 1e-9, `luminance rises at t=${i / 100}`);
    previous = l;
  }
  assert.deepEqual(greenRamp(-3), greenRamp(0));
  assert.deepEqual(greenRamp(Number.NaN), greenRamp(0));
});

test("the lookup table matches the ramp at each grey level", () => {
  const table = greenLookupTable();
  assert.equal(table.length, 1024);
  for (const level of [0, 77, 128, 255]) {
    const [r, g, b] = greenRamp(level / 255);
    assert.deepEqual([...table.slice(level * 4, level * 4 + 4)], [r, g, b, 255]);
  }
});

test("range header and dequantisation recover the value range", () => {
  assert.deepEqual(parseRangeHeader("-1.5, 3"), [-1.5, 3]);
  assert.equal(parseRangeHeader(null), null);
  assert.equal(parseRangeHeader("3,1"), null);
  assert.equal(parseRangeHeader("a,b"), null);
  assert.equal(dequantise(0, -1.5, 3), -1.5);
  assert.equal(dequantise(255, -1.5, 3), 3);
});

test("formatValue keeps three significant digits", () => {
  assert.equal(formatValue(0.123456), "0.123");
  assert.equal(formatValue(1234.5), "1230");
  assert.equal(formatValue(123456), "1.23e+5");
  assert.equal(formatValue(null), "n/a");
  assert.equal(formatValue(0), "0");
});
