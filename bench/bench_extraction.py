"""Run ``aevis bench --json`` and print the measured ratios next to the goals.

Usage: python bench/bench_extraction.py [aevis bench options, e.g. --model resnet18 --size 112]
"""

import contextlib
import io
import json
import sys

from tensorboard_plugin_aevis.cli import main

GOALS = {
    "overhead_ratio": ("<=", 1.25),
    "extract_seconds": ("<=", 10.0),  # the resnet50 triplet at 224 px
    "batched_speedup": (">=", 0.9),
}


def run(argv):
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        code = main(["bench", "--json", *argv])
    if code != 0:
        sys.exit(code)
    return json.loads(out.getvalue())


if __name__ == "__main__":
    result = run(sys.argv[1:])
    print(f"{result['model']} at {result['size']} px, {result['method']}, {result['device']}, {result['threads']} threads")
    print(f"  chain: {result['steps']} steps in {result['extract_seconds']} s (step {result['step_seconds']} s, limit {result['limit_seconds']} s)")
    for key, (op, goal) in GOALS.items():
        value = result[key]
        ok = value <= goal if op == "<=" else value >= goal
        print(f"  {key:>16} = {value:<8} goal {op} {goal}: {'met' if ok else 'NOT met'}")
    print(f"  label_preserved = {result['label_preserved']}, kept_fraction = {result['kept_fraction']}")
