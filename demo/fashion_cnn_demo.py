"""AEVis demo over training: how do the datapaths of adversarial examples form?

Trains the paper's 6-layer CNN (5 conv + 1 FC, Sec. 4.2) on Fashion-MNIST for one
epoch, keeps snapshots of the weights at several training steps, attacks a few test
images with MI-FGSM against the trained model, picks each one's target among 8 test
images of the class it falls into (the representative of paper Sec. 6.2.1, recorded in
``params["provenance"]``), and logs the datapaths of the SAME triplets at every
snapshot step, so TensorBoard's step axis shows how the diverging and merging layers
appear while the network learns. The run keeps the model artifacts of the first and
the last step (``add_analysis``'s default ``save_model`` policy).

Uses only the public API. Needs the Debian package ``dataset-fashion-mnist``.
Run directly (``python demo/fashion_cnn_demo.py --logdir runs/fashion``) or through
``aevis demo --model fashion-cnn``.
"""

import argparse
import copy
import json
import os

import torch
from torch.utils.tensorboard import SummaryWriter

import summary_writers
from tensorboard_plugin_aevis.attacks import mi_fgsm
from tensorboard_plugin_aevis.datapath_metrics import representative_target
from tensorboard_plugin_aevis.extraction import extract_datapaths
from tensorboard_plugin_aevis.fashion_cnn import (
    FASHION_CLASSES, FASHION_MNIST_ROOT, FashionCNN, load_fashion_mnist, to_tensor, train_fashion_cnn,
)

NUM_SNAPSHOTS = 5  # training steps at which the datapaths are logged
NUM_EXAMPLES = 3  # adversarial examples followed over training
NUM_CANDIDATE_TARGETS = 8  # normal images of the class each adversarial example falls into
EPSILON = 0.1  # MI-FGSM budget in [0, 1] pixel space (Fashion-MNIST needs more than 16/255)


def run(logdir: str, device: str = "cpu", progress: bool = True, seed: int = 0) -> dict:
    """Train, attack and log the datapaths at several training steps; returns a summary dict."""
    torch.manual_seed(seed)
    root = os.environ.get("AEVIS_FASHION_MNIST_ROOT", FASHION_MNIST_ROOT)
    train_images, train_labels = load_fashion_mnist(root, split="train")
    test_images, test_labels = load_fashion_mnist(root, split="test")
    x_test, y_test = to_tensor(test_images), torch.as_tensor(test_labels).long()

    model = FashionCNN().to(device)
    steps_per_epoch = len(train_labels) // 64
    snapshot_steps = {round(i * steps_per_epoch / (NUM_SNAPSHOTS - 1)) for i in range(NUM_SNAPSHOTS)}
    snapshots = {}

    def keep_snapshot(steps_done, trained):
        if steps_done in snapshot_steps:
            snapshots[steps_done] = copy.deepcopy(trained.state_dict())

    keep_snapshot(0, model)  # the untrained network
    train_fashion_cnn(model, train_images, train_labels, steps=steps_per_epoch, batch_size=64, seed=seed,
                      callback=lambda step, trained: keep_snapshot(step + 1, trained), progress=progress)

    # Adversarial examples against the trained network, and normal images of the class each falls into.
    with torch.no_grad():
        predicted = model(x_test.to(device)).argmax(1).cpu()
    correct = (predicted == y_test).nonzero().flatten()
    triplets = []
    for index in correct.tolist():
        source = x_test[index : index + 1].to(device)
        adversarial = mi_fgsm(model, source, label=y_test[index : index + 1].to(device), eps=EPSILON)
        with torch.no_grad():
            adversarial_label = int(model(adversarial).argmax(1))
        if adversarial_label == int(y_test[index]):
            continue
        candidates = ((y_test == adversarial_label) & (predicted == adversarial_label)).nonzero().flatten()[:NUM_CANDIDATE_TARGETS]
        images = torch.cat([adversarial, source, x_test[candidates].to(device)])
        roles = ["adversarial", "source"] + ["target"] * len(candidates)
        analysis = extract_datapaths(model, images, roles, method="constrained", class_names=FASHION_CLASSES, device=device)
        best = representative_target(analysis, 0, list(range(2, len(roles))))
        provenance = {
            "adversarial": f"MI-FGSM, untargeted (away from '{FASHION_CLASSES[int(y_test[index])]}'), eps {EPSILON:g} "
                           f"({EPSILON * 255:g}/255), 10 steps, against the trained network (final step); the first "
                           f"{NUM_EXAMPLES} correctly classified test images that it fools",
            "target": f"representative (paper Sec. 6.2.1: datapath closest to the adversarial one, constrained, trained "
                      f"network) of {len(candidates)} test images of '{FASHION_CLASSES[adversarial_label]}': test "
                      f"#{int(candidates[best - 2])}; the same target at every step",
        }
        triplets.append((index, adversarial, source, images[best : best + 1], int(y_test[index]), adversarial_label, provenance))
        if len(triplets) == NUM_EXAMPLES:
            break

    summary = {"logdir": logdir, "steps": sorted(snapshots), "analyses": []}
    with SummaryWriter(logdir) as writer:
        for step in sorted(snapshots):
            model.load_state_dict(snapshots[step])
            for index, adversarial, source, target, source_label, adversarial_label, provenance in triplets:
                name = f"test #{index}: {FASHION_CLASSES[source_label]} -> {FASHION_CLASSES[adversarial_label]}"
                images = torch.cat([adversarial, source, target])
                for method in ("constrained", "dgr"):
                    analysis = extract_datapaths(
                        model, images, ["adversarial", "source", "target"],
                        [f"#{index} (adversarial)", f"#{index}", "target"],
                        method=method, class_names=FASHION_CLASSES, device=device,
                    )
                    analysis.params["provenance"] = provenance
                    summary_writers.add_analysis(writer, name, analysis, step=step, model=model, reference_images=x_test[:256])
                    summary["analyses"].append({"name": name, "method": method, "step": step, "provenance": provenance,
                                                "label_preserved": all(e.label_preserved for e in analysis.examples)})
    return summary


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--logdir", default=os.path.join("runs", "fashion"))
    parser.add_argument("--device", default="cpu")
    args = parser.parse_args(argv)
    print(json.dumps(run(args.logdir, args.device), indent=2))


if __name__ == "__main__":
    main()
