"""``aevis evaluate``: the paper's Table 1 protocol (see ``evaluation.py``) on a dataset.

Datasets (``--dataset``):

- ``fashion-mnist``: the paper's 6-layer CNN (trained once, weights cached), sources
  ``--per-class`` test images of each class, targets from the whole test split;
- ``photos``: EfficientNet-Lite0 (ImageNet weights) on the bundled real photos; the
  target pool holds ``--views`` random crops / flips of every photo (the only normal
  images of those classes that ship offline), and the attack is targeted at the class
  of another photo so that normal images of the adversarial class exist;
- ``folder:PATH``: an ImageFolder layout (``PATH/<class>/<image>``) and ``--model``.
"""

from __future__ import annotations

import json
import os
import sys
from typing import List, Optional, Tuple

import numpy as np
import torch

from tensorboard_plugin_aevis.cli import add_optimiser_arguments, optimiser_options
from tensorboard_plugin_aevis.errors import UserError

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp", ".tif", ".tiff")
DEFAULT_EPS = {"fashion-mnist": 0.1, "photos": 16 / 255, "folder": 16 / 255}


def add_parser(subparsers) -> None:
    parser = subparsers.add_parser(
        "evaluate", help="Table 1 protocol: top-K diverging-merging scores, constrained vs DGR",
        description="Attack every source image with MI-FGSM, extract the datapaths of each misclassified example, its "
                    "source and N normal target images with each method, and score how often the diverging-merging "
                    "pattern appears among the most similar targets (paper Sec. 6.1).")
    add_arguments(parser)
    parser.set_defaults(func=run_evaluate)


def add_arguments(parser) -> None:
    parser.add_argument("--dataset", default="fashion-mnist", help="fashion-mnist (default), photos or folder:PATH")
    parser.add_argument("--model", default=None, help="model spec for folder:PATH (torchvision name, efficientnet-lite0, module:factory)")
    parser.add_argument("--weights", default=None, help="state-dict file for --model")
    parser.add_argument("--logdir", default=os.path.join("runs", "evaluation"), help="output folder (default runs/evaluation)")
    parser.add_argument("--targets", type=int, default=20, help="normal target images per adversarial example (default 20)")
    parser.add_argument("--per-class", type=int, default=12, help="fashion-mnist: source images per class (default 12)")
    parser.add_argument("--max-sources", type=int, default=None, help="attack at most this many correctly classified sources")
    parser.add_argument("--views", type=int, default=24, help="photos: augmented views per photo in the target pool (default 24)")
    parser.add_argument("--image-size", type=int, default=224, help="photos / folder: image side in pixels (default 224)")
    parser.add_argument("--methods", default="constrained,dgr", help="comma-separated extraction methods (default constrained,dgr)")
    add_optimiser_arguments(parser)
    parser.add_argument("--r", type=int, default=None, help="pattern length of Eq. 10 (default min(8, layers - 1))")
    parser.add_argument("--eps", type=float, default=None, help="MI-FGSM budget in [0,1] pixels (default 0.1 fashion-mnist, 16/255 otherwise)")
    parser.add_argument("--attack-steps", type=int, default=10, help="MI-FGSM iterations (default 10)")
    parser.add_argument("--targeted", choices=("auto", "yes", "no"), default="auto",
                        help="targeted attack at another class of the dataset (auto: yes for photos only)")
    parser.add_argument("--stability-every", type=int, default=10,
                        help="measure stability (chain order, perturbed init) on every k-th source (0: never)")
    parser.add_argument("--init-noise", type=float, default=0.5,
                        help="init stability: gates start at 1 - NOISE * U(0,1), NOISE in (0, 1) (default 0.5)")
    parser.add_argument("--init-seeds", type=int, default=2, help="init stability: perturbed runs per method (default 2; 0: off)")
    parser.add_argument("--r-sensitivity", default="", help="comma-separated other r values to report top-K for (e.g. 2,3)")
    parser.add_argument("--threads", type=int, default=None,
                        help="torch CPU threads per process (default: torch's choice; 1 is much faster on a busy machine)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--shard", default=None, help="i/n: evaluate only shard i of n (then merge with --reduce-only)")
    parser.add_argument("--reduce-only", action="store_true", help="merge the shards already under --logdir and report")


# ----------------------------------------------------------------------------- datasets


def fashion_mnist_data(per_class: int, seed: int = 0, progress: bool = True):
    """(FashionCNN trained one epoch (cached), EvalData): sources per class, pool = test split."""
    from tensorboard_plugin_aevis.evaluation import EvalData
    from tensorboard_plugin_aevis.fashion_cnn import FASHION_CLASSES, class_subset, load_fashion_mnist, pretrained_fashion_cnn, to_tensor

    try:
        images, labels = load_fashion_mnist(split="test")
        model = pretrained_fashion_cnn(progress=progress)
    except FileNotFoundError as e:
        raise UserError(str(e)) from None
    rng_indices = np.arange(len(labels))
    src_idx, src_labels = class_subset(rng_indices, labels, per_class=per_class, seed=seed)
    data = EvalData(
        name=f"fashion-mnist(per_class={per_class},seed={seed})",
        source_images=to_tensor(images[src_idx]), source_labels=torch.as_tensor(src_labels),
        pool_images=to_tensor(images), pool_labels=torch.as_tensor(labels),
        class_names=list(FASHION_CLASSES), source_names=[f"test #{i}" for i in src_idx],
    )
    return model, data


def photo_views(photo: torch.Tensor, count: int, size: int, seed: int) -> torch.Tensor:
    """``count`` random views ``(count, 3, size, size)`` of a ``(3, S, S)`` photo (S >= size): crop, flip, brightness."""
    generator = torch.Generator().manual_seed(seed)
    views = []
    span = photo.shape[-1] - size
    for _ in range(count):
        top, left = (int(v) for v in torch.randint(0, span + 1, (2,), generator=generator))
        view = photo[:, top:top + size, left:left + size]
        if torch.rand((), generator=generator) < 0.5:
            view = view.flip(-1)
        gain = 0.85 + 0.3 * float(torch.rand((), generator=generator))
        views.append((view * gain).clamp(0, 1))
    return torch.stack(views)


def photo_data(views: int, size: int = 224, seed: int = 0, device: str = "cpu"):
    """(EfficientNet-Lite0, EvalData) on the bundled photos; labels: the known ImageNet class, else the model's."""
    from tensorboard_plugin_aevis.evaluation import EvalData, predict_labels
    from tensorboard_plugin_aevis.models import load_model
    from tensorboard_plugin_aevis.sample_images import PHOTOS, load_photo

    try:
        model = load_model("efficientnet-lite0", device=device)
        names = sorted(PHOTOS)
        photos = torch.stack([load_photo(n, size) for n in names])
        large = [load_photo(n, int(round(size * 1.25))) for n in names]
    except ImportError as e:
        raise UserError(f"{e}") from None
    predicted = predict_labels(model, photos, device=device)
    labels = torch.tensor([PHOTOS[n][1] if PHOTOS[n][1] is not None else int(p) for n, p in zip(names, predicted)])
    pool = torch.cat([photo_views(p, views, size, seed * 1000 + i) for i, p in enumerate(large)])
    pool_labels = labels.repeat_interleave(views)
    data = EvalData(name=f"photos(size={size},views={views},seed={seed})", source_images=photos, source_labels=labels,
                    pool_images=pool, pool_labels=pool_labels, class_names=list(model.class_names), source_names=names)
    return model, data


def folder_data(path: str, model_spec: Optional[str], weights: Optional[str], size: int, device: str = "cpu"):
    """(model, EvalData) for ``path/<class>/<image>``; the images are both the sources and the target pool."""
    from tensorboard_plugin_aevis.evaluation import EvalData
    from tensorboard_plugin_aevis.models import load_model
    from tensorboard_plugin_aevis.sample_images import load_image_file

    if not model_spec:
        raise UserError("--dataset folder:PATH needs --model (a torchvision name, efficientnet-lite0 or module:factory)")
    if not os.path.isdir(path):
        raise UserError(f"--dataset folder:{path}: no such folder; give a folder with one sub-folder of images per class")
    classes = sorted(d for d in os.listdir(path) if os.path.isdir(os.path.join(path, d)))
    if len(classes) < 2:
        raise UserError(f"{path} has {len(classes)} class folder(s) ({', '.join(classes) or 'none'}); the protocol needs "
                        "at least two classes (PATH/<class>/<image>), since adversarial examples must fall into a class "
                        "that has normal images")
    try:
        model = load_model(model_spec, weights=weights, device=device)
    except (ValueError, TypeError, ImportError) as e:
        raise UserError(str(e)) from None
    names = list(model.class_names) if model.class_names else None
    files: List[Tuple[str, int]] = []
    for position, c in enumerate(classes):
        if names is not None:
            if c not in names:
                raise UserError(f"class folder {c!r} is not one of the model's class names (e.g. {names[0]!r}); name the "
                                "folders after the model's classes")
            label = names.index(c)
        else:
            label = position
        for f in sorted(os.listdir(os.path.join(path, c))):
            if f.lower().endswith(IMAGE_SUFFIXES):
                files.append((os.path.join(c, f), label))
    if not files:
        raise UserError(f"no images ({', '.join(IMAGE_SUFFIXES)}) under {path}/<class>/")
    channels = model.in_channels
    try:
        images = torch.stack([load_image_file(os.path.join(path, f), size, channels) for f, _ in files])
    except ValueError as e:
        raise UserError(str(e)) from None
    labels = torch.tensor([label for _, label in files])
    data = EvalData(name=f"folder:{os.path.abspath(path)}(size={size})", source_images=images, source_labels=labels,
                    pool_images=images, pool_labels=labels,
                    class_names=names if names is not None else classes, source_names=[f for f, _ in files])
    return model, data


def build(args):
    """(model, EvalData, EvalConfig) from the parsed arguments."""
    from tensorboard_plugin_aevis.evaluation import EvalConfig

    progress = args.progress
    if args.dataset == "fashion-mnist":
        kind = "fashion-mnist"
        model, data = fashion_mnist_data(args.per_class, args.seed, progress)
    elif args.dataset == "photos":
        kind = "photos"
        model, data = photo_data(args.views, args.image_size, args.seed, args.device)
    elif args.dataset.startswith("folder:"):
        kind = "folder"
        model, data = folder_data(args.dataset[len("folder:"):], args.model, args.weights, args.image_size, args.device)
    else:
        raise UserError(f"--dataset {args.dataset!r} is not known; use fashion-mnist, photos or folder:PATH")
    methods = tuple(m.strip() for m in args.methods.split(",") if m.strip())
    unknown = [m for m in methods if m not in ("constrained", "dgr")]
    if unknown or not methods:
        raise UserError(f"--methods {args.methods!r}: use constrained, dgr or both (comma-separated)")
    targeted = {"yes": True, "no": False, "auto": kind == "photos"}[args.targeted]
    config = EvalConfig(n_targets=args.targets, methods=methods, r=args.r,
                        eps=DEFAULT_EPS[kind] if args.eps is None else args.eps, attack_steps=args.attack_steps,
                        targeted=targeted, seed=args.seed, stability_every=args.stability_every,
                        init_noise=args.init_noise, init_seeds=args.init_seeds,
                        max_sources=args.max_sources, extraction_params=optimiser_options(args, methods))
    return model, data, config


def parse_shard(text: Optional[str]) -> Optional[Tuple[int, int]]:
    if text is None:
        return None
    try:
        i, n = (int(v) for v in text.split("/"))
    except ValueError:
        raise UserError(f"--shard {text!r}: write it as i/n, e.g. 0/2") from None
    if n < 1 or not 0 <= i < n:
        raise UserError(f"--shard {text}: need 0 <= i < n")
    return i, n


def run_evaluate(args) -> int:
    from tensorboard_plugin_aevis import evaluation

    if args.threads is not None:
        if args.threads < 1:
            raise UserError(f"--threads {args.threads}: give a positive number of threads")
        torch.set_num_threads(args.threads)
    try:
        extra_r = [int(v) for v in args.r_sensitivity.split(",") if v.strip()]
    except ValueError:
        raise UserError(f"--r-sensitivity {args.r_sensitivity!r}: give comma-separated integers, e.g. 2,3") from None
    try:
        if not args.reduce_only:
            shard = parse_shard(args.shard)
            rank, world, owns_group = evaluation.distributed_context()
            if shard is not None and world > 1:
                raise UserError("--shard and torchrun both split the work; use one of them")
            if shard is not None:
                rank, world = shard
            model, data, config = build(args)
            evaluation.run_shard(model, data, config, args.logdir, rank, world, device=args.device,
                                 progress=args.progress)
            if world > 1 and shard is None:  # torchrun: wait for every rank, rank 0 merges
                import torch.distributed as dist

                dist.barrier()
                if owns_group and rank != 0:
                    dist.destroy_process_group()
                    return 0
                if owns_group:
                    dist.destroy_process_group()
            elif shard is not None:
                print(f"shard {rank}/{world} written to {os.path.join(args.logdir, f'rank-{rank}')}; merge with "
                      f"`aevis evaluate --reduce-only --logdir {args.logdir}` once every shard is done", file=sys.stderr)
                return 0
        summary = evaluation.reduce_results(args.logdir, extra_r)
    except evaluation.EvaluationError as e:
        raise UserError(str(e)) from None
    if args.json:
        print(json.dumps(summary, indent=2))
    else:
        print(evaluation.markdown_table(summary))
        print(f"\nTensorBoard: tensorboard --logdir {args.logdir} (run '{evaluation.SUMMARY_RUN}', Scalars and Text)")
    return 0
