"""Contribution analysis speed on this CPU: SGD vs the quadratic approximation (issue 7).

resnet50 (random weights), 224 px photo, target ``model.layer3.2`` (a mid layer, 14x14),
a centred 4x4-neuron area, earlier layer ``model.layer3.1``; prints one JSON object with
``sgd_seconds``, ``quadratic_seconds`` and ``rank_correlation`` (goals: 1 s and 0.1 s).

    .venv/bin/python bench/bench_contribution.py
    .venv/bin/python bench/bench_contribution.py --earlier-layer model.layer2 --threads 1
"""

import argparse
import json

import torch

from tensorboard_plugin_aevis.commands.contribution import bench_contribution


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="resnet50")
    parser.add_argument("--size", type=int, default=224)
    parser.add_argument("--target-layer", default="model.layer3.2")
    parser.add_argument("--earlier-layer", default="model.layer3.1")
    parser.add_argument("--area-side", type=int, default=4)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--steps", type=int, help="SGD steps (default: the engine's)")
    parser.add_argument("--threads", type=int, help="torch CPU threads (default: torch's)")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    print(json.dumps(bench_contribution(args.model, args.size, args.target_layer, args.earlier_layer,
                                        args.area_side, repeats=args.repeats, steps=args.steps)))


if __name__ == "__main__":
    main()
