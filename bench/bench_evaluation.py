"""Throughput of the Table 1 protocol's extraction: triplets per minute, batched vs one by one.

Batched: the adversarial example, its source and all N targets in ONE
``extract_datapaths`` call (what ``aevis evaluate`` does). One by one: N calls, each on
one triplet (adversarial, source, one target). Both on the same adversarial examples of
the FashionCNN (cached weights, trained on first use) or EfficientNet-Lite0 on photos.

    .venv/bin/python bench/bench_evaluation.py --examples 3 --targets 20 --threads 1
    .venv/bin/python bench/bench_evaluation.py --model efficientnet-lite0 --examples 1 --targets 5 --threads 1
"""

import argparse
import json
import time

import torch

from tensorboard_plugin_aevis.attacks import mi_fgsm
from tensorboard_plugin_aevis.extraction import extract_datapaths


def fashion_triplet_sources(examples: int, targets: int, seed: int):
    """[(adversarial (1,1,28,28), source (1,1,28,28), targets (N,1,28,28))] and the model."""
    from tensorboard_plugin_aevis.fashion_cnn import load_fashion_mnist, predict, pretrained_fashion_cnn, to_tensor

    model = pretrained_fashion_cnn(progress=False)
    images, labels = load_fashion_mnist(split="test")
    x, y = to_tensor(images), torch.as_tensor(labels)
    pred = predict(model, x)
    out = []
    generator = torch.Generator().manual_seed(seed)
    for i in torch.randperm(len(y), generator=generator).tolist():
        if pred[i] != y[i]:
            continue
        adv = mi_fgsm(model, x[i:i + 1], label=y[i:i + 1], eps=0.1)
        adv_label = int(model(adv).argmax(1))
        if adv_label == int(y[i]):
            continue
        pool = torch.nonzero((y == adv_label) & (pred == y)).flatten()
        out.append((adv, x[i:i + 1], x[pool[torch.randperm(len(pool), generator=generator)[:targets]]]))
        if len(out) == examples:
            return model, out
    raise RuntimeError("not enough misclassified adversarial examples")


def photo_triplet_sources(examples: int, targets: int, seed: int):
    from tensorboard_plugin_aevis.commands.evaluate import photo_data

    model, data = photo_data(views=targets, seed=seed)
    out = []
    for i in range(examples):
        j = (i + 1) % len(data.source_labels)  # targeted at the next photo's class; its views are the targets
        adv = mi_fgsm(model, data.source_images[i:i + 1], target=data.source_labels[j:j + 1], eps=16 / 255)
        out.append((adv, data.source_images[i:i + 1], data.pool_images[j * targets:(j + 1) * targets]))
    return model, out


def time_calls(model, triplet_sources, method: str, batched: bool) -> float:
    """Seconds to extract every triplet of every example, batched or one call per triplet."""
    started = time.perf_counter()
    for adv, src, targets in triplet_sources:
        if batched:
            batches = [torch.cat([adv, src, targets])]
        else:
            batches = [torch.cat([adv, src, targets[t:t + 1]]) for t in range(len(targets))]
        for images in batches:
            roles = ["adversarial", "source"] + ["target"] * (len(images) - 2)
            extract_datapaths(model, images, roles, method=method, keep_activation_maps=False)
    return time.perf_counter() - started


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", choices=("fashion-cnn", "efficientnet-lite0"), default="fashion-cnn")
    parser.add_argument("--examples", type=int, default=3, help="adversarial examples")
    parser.add_argument("--targets", type=int, default=20, help="targets per adversarial example")
    parser.add_argument("--methods", default="constrained,dgr")
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's choice)")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    build = fashion_triplet_sources if args.model == "fashion-cnn" else photo_triplet_sources
    model, triplet_sources = build(args.examples, args.targets, args.seed)
    triplets = sum(len(t) for _, _, t in triplet_sources)
    result = {"model": args.model, "examples": len(triplet_sources), "triplets": triplets,
              "threads": torch.get_num_threads(), "methods": {}}
    for method in args.methods.split(","):
        row = {}
        for mode, batched in (("batched", True), ("one_by_one", False)):
            seconds = time_calls(model, triplet_sources, method, batched)
            row[mode] = {"seconds": round(seconds, 2), "triplets_per_minute": round(60 * triplets / seconds, 1)}
        row["speed_up"] = round(row["batched"]["triplets_per_minute"] / row["one_by_one"]["triplets_per_minute"], 2)
        result["methods"][method] = row
        print(f"{method:12s} batched {row['batched']['triplets_per_minute']:8.1f} triplets/min   one by one "
              f"{row['one_by_one']['triplets_per_minute']:8.1f} triplets/min   speed-up x{row['speed_up']}")
    print(json.dumps(result))
    return result


if __name__ == "__main__":
    main()
