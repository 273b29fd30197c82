"""Disk use of a training loop's model artifacts under ``save_model`` policies.

Logs one resnet50 analysis (random weights, 64 px images, 2 extraction steps: the
artifact's size depends on the weights, not on the images) at ``--steps`` training
steps, changing the weights before each (one SGD step on random data, as training
does), and prints, per policy, how many artifacts the run keeps and their size on disk.

    python bench/bench_model_policy.py [--steps 20] [--policies first-and-latest all]
"""

import argparse
import json
import os
import tempfile
import time

import torch
import torchvision

from summary_writers import add_analysis
from tensorboard_plugin_aevis.extraction import extract_datapaths
from tensorboard_plugin_aevis.models import ClassifierWrapper


def folder_bytes(path: str) -> int:
    return sum(os.path.getsize(os.path.join(d, f)) for d, _, files in os.walk(path) for f in files)


def run(policy: str, steps: int, logdir: str) -> dict:
    torch.manual_seed(0)
    model = ClassifierWrapper(torchvision.models.resnet50(), (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)).eval()
    images = torch.rand(3, 3, 64, 64)
    analysis = extract_datapaths(model, images, ["adversarial", "source", "target"], steps=2)
    optimiser = torch.optim.SGD(model.parameters(), lr=1e-3)
    started = time.perf_counter()
    for step in range(steps):
        model.train()
        optimiser.zero_grad()
        torch.nn.functional.cross_entropy(model(torch.rand(2, 3, 64, 64)), torch.tensor([0, 1])).backward()
        optimiser.step()
        model.eval()
        add_analysis(logdir, "cat->espresso", analysis, step, model=model, save_model=policy)
    models = os.path.join(logdir, "plugins", "aevis", "models")
    kept = sorted(os.listdir(models)) if os.path.isdir(models) else []
    return {"policy": policy, "steps": steps, "artifacts": len(kept), "artifact_bytes": folder_bytes(models) if kept else 0,
            "run_bytes": folder_bytes(logdir), "seconds": round(time.perf_counter() - started, 1)}


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--policies", nargs="+", default=["first-and-latest", "all"])
    args = parser.parse_args(argv)
    for policy in args.policies:
        with tempfile.TemporaryDirectory() as folder:
            print(json.dumps(run(policy, args.steps, os.path.join(folder, "run"))), flush=True)


if __name__ == "__main__":
    main()
