"""Issue 16's start-stability protocol on the demo triplet, one row per start, with the goals.

The triplet: EfficientNet-Lite0 (ImageNet weights), the cat photo, its targeted MI-FGSM example
(espresso, eps 16/255, 10 steps), the coffee photo as target; one ``extract_datapaths`` call per
start: the default start (all ones), ``init_noise=0.02`` with seeds 1 and 2, and the default start
on the images plus ``U(-0.5, 0.5) / 255`` noise (``torch.Generator`` seed 0, clamped to [0, 1]).
Jaccard: each example's binary datapath against the default start's. Run with OMP_NUM_THREADS=1 and
compare seconds only between runs made side by side.

Usage: python bench/bench_start_stability.py [--steps N] [--warmup W] [--multiplicative | --no-multiplicative]
    [--starts default seed1 seed2 noise] [--json]
"""

import argparse
import json
import time

import numpy as np
import torch

from tensorboard_plugin_aevis.attacks import mi_fgsm
from tensorboard_plugin_aevis.extraction import extract_datapaths
from tensorboard_plugin_aevis.models import load_model
from tensorboard_plugin_aevis.sample_images import load_photo

ROLES = ["adversarial", "source", "target"]
GOALS = "Jaccard >= 0.8, kept <= 15 %, every label, loss within 10 % of the default start's, <= 150 steps"


def triplet(model):
    source = load_photo("chelsea")[None]
    adversarial = mi_fgsm(model, source, target=torch.tensor([967]), eps=16 / 255, steps=10)
    return torch.cat([adversarial, source, load_photo("coffee")[None]])


def run_start(model, x, start, options):
    if start.startswith("seed"):
        options = {**options, "init_noise": 0.02, "seed": int(start[4:])}
    elif start == "noise":
        gen = torch.Generator().manual_seed(0)
        x = (x + (torch.rand(x.shape, generator=gen) - 0.5) / 255).clamp(0, 1)
    elif start != "default":
        raise SystemExit(f"unknown start {start!r}; use default, seedN or noise")
    began = time.perf_counter()
    analysis = extract_datapaths(model, x, ROLES, **options)
    seconds = time.perf_counter() - began
    binary = np.stack([np.concatenate([layer[i].ravel() for layer in analysis.binary()]) for i in range(len(ROLES))])
    return binary, {
        "start": start,
        "kept": [round(float(k), 4) for k in binary.mean(axis=1)],
        "loss": [e.loss_history[-1] for e in analysis.examples],
        "labels_kept": [e.binary_label == e.label for e in analysis.examples],
        "steps": sum(analysis.params["steps_run"]) + sum(analysis.params["discarded_steps"]),
        "steps_run": analysis.params["steps_run"],
        "seconds": round(seconds, 1),
        "load_average": float(open("/proc/loadavg").read().split()[0]),
    }


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--steps", type=int)
    parser.add_argument("--warmup", type=int)
    parser.add_argument("--multiplicative", action=argparse.BooleanOptionalAction, default=None)
    parser.add_argument("--starts", nargs="+", default=["default", "seed1", "seed2", "noise"])
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    options = {k: v for k, v in {"steps": args.steps, "warmup": args.warmup,
                                  "multiplicative": args.multiplicative}.items() if v is not None}
    torch.manual_seed(0)
    model = load_model("efficientnet-lite0")
    x = triplet(model)
    reference, rows = None, []
    for start in ["default"] + [s for s in args.starts if s != "default"]:
        binary, row = run_start(model, x, start, options)
        if reference is None:
            reference, base_loss = binary, row["loss"]
        both, either = (binary & reference).sum(axis=1), (binary | reference).sum(axis=1)
        row["jaccard"] = [round(float(b / max(e, 1)), 3) for b, e in zip(both, either)]
        row["loss_vs_default"] = [round(l / b - 1, 3) for l, b in zip(row["loss"], base_loss)]
        rows.append(row)
        if not args.json:
            print(f"{start:>8}: kept {row['kept']} Jaccard {row['jaccard']} loss {[f'{v:.4g}' for v in row['loss']]} "
                  f"({row['loss_vs_default']}) labels {row['labels_kept']} steps {row['steps']} {row['steps_run']} "
                  f"{row['seconds']} s, load {row['load_average']}", flush=True)
    if args.json:
        print(json.dumps({"options": options, "rows": rows}))
    else:
        print("goals:", GOALS)


if __name__ == "__main__":
    main()
