"""``aevis contribution``: which earlier feature maps drive a target map (Eq. 7 / 8) or the prediction.

    aevis contribution --model resnet50 --photo chelsea --target-layer model.layer3.2 \\
        --channel 17 --area 5,5,9,9 --earlier-layer model.layer3.1 --mode quadratic --json

Several ``--image`` / ``--photo`` values are analysed together (the datapaths of Eq. 7's
constraint term). ``--prediction`` ranks the maps of ``--earlier-layer`` by their
contribution to the final prediction instead. :func:`bench_contribution` is the
SGD-versus-quadratic benchmark behind ``aevis bench --contribution``.
"""

from __future__ import annotations

import json
import time
from typing import Any, Dict, List, Optional, Sequence, Tuple

from tensorboard_plugin_aevis.cli import UserError, check_device


def add_parser(subparsers) -> None:
    parser = subparsers.add_parser(
        "contribution",
        help="rank the earlier feature maps that drive a target feature map (or the prediction)",
        description="Contribution analysis (paper Sec. 5.4): gates on the feature maps of an earlier layer, "
        "fitted to preserve a target feature map (Eq. 7), an area of it (Eq. 8) or the prediction.",
    )
    parser.add_argument("--model", required=True, help="torchvision name (resnet50), efficientnet-lite0 or module:factory")
    parser.add_argument("--weights", help="state_dict file for the model (read with torch.load(weights_only=True))")
    parser.add_argument("--image", action="append", default=[], metavar="PATH", help="image file; repeat for several datapaths")
    parser.add_argument("--photo", action="append", default=[], metavar="NAME", help="bundled photo (chelsea, coffee, ...); repeatable")
    parser.add_argument("--size", type=int, help="image side in pixels (default: the model's input size, else 224)")
    target = parser.add_mutually_exclusive_group(required=True)
    target.add_argument("--target-layer", help="module path of the target feature map's layer (e.g. model.layer3.2)")
    target.add_argument("--prediction", action="store_true", help="contributions to the final prediction instead of a feature map")
    parser.add_argument("--channel", type=int, help="feature map index in --target-layer")
    parser.add_argument("--area", metavar="Y0,X0,Y1,X1", help="half-open neuron rectangle of the target map (Eq. 8); default: the whole map (Eq. 7)")
    parser.add_argument("--earlier-layer", required=True, help="module path of the earlier layer whose maps are ranked")
    parser.add_argument("--mode", choices=("sgd", "quadratic"), default="sgd", help="sgd (default, as the paper) or the fast quadratic approximation")
    parser.add_argument("--lambda", dest="lambda_", type=float, help="L1 weight (default: the engine's)")
    parser.add_argument("--gamma", type=float, help="weight of the constraint across the datapaths (default: the engine's)")
    parser.add_argument("--steps", type=int, help="optimiser steps (default: the engine's)")
    parser.add_argument("--top", type=int, default=10, help="length of the ranked list (default 10)")
    parser.set_defaults(func=run_contribution)


def parse_area(text: Optional[str]) -> Optional[Tuple[int, int, int, int]]:
    """``"y0,x0,y1,x1"`` -> a 4-tuple of ints (None stays None); UserError otherwise."""
    if text is None:
        return None
    parts = text.split(",")
    try:
        values = tuple(int(p) for p in parts)
    except ValueError:
        values = ()
    if len(values) != 4:
        raise UserError(f"--area {text!r} must be four integers y0,x0,y1,x1 (half-open neuron rectangle of the target map)")
    return values  # type: ignore[return-value]


def _load_images(image_paths: Sequence[str], photos: Sequence[str], size: int):
    import torch

    from tensorboard_plugin_aevis.sample_images import load_image_file, load_photo

    if not image_paths and not photos:
        raise UserError("give at least one --image PATH or --photo NAME")
    try:
        images = [load_image_file(p, size=size) for p in image_paths] + [load_photo(n, size=size) for n in photos]
    except (ValueError, ImportError) as e:
        raise UserError(str(e)) from None
    return torch.stack(images)


def run_contribution(args) -> int:
    from tensorboard_plugin_aevis import contribution
    from tensorboard_plugin_aevis.models import load_model

    if not args.prediction and args.channel is None:
        raise UserError("--channel is required with --target-layer (the feature map index in that layer)")
    if args.prediction and (args.channel is not None or args.area is not None):
        raise UserError("--channel and --area belong to --target-layer; drop them with --prediction")
    if args.top < 1:
        raise UserError("--top must be at least 1")
    area = parse_area(args.area)
    check_device(args.device)
    try:
        model = load_model(args.model, weights=args.weights, device=args.device)
    except (ValueError, ImportError, OSError) as e:
        raise UserError(str(e)) from None
    size = args.size or (model.input_size[0] if getattr(model, "input_size", None) else 224)
    images = _load_images(args.image, args.photo, size).to(args.device)
    options: Dict[str, Any] = {"mode": args.mode}
    for name, value in (("lambda_", args.lambda_), ("gamma", args.gamma), ("steps", args.steps)):
        if value is not None:
            options[name] = value
    try:
        if args.prediction:
            result = contribution.prediction_contributions(model, images, args.earlier_layer, **options)
        else:
            result = contribution.feature_map_contributions(model, images, args.target_layer, args.channel, args.earlier_layer, area=area, **options)
    except (ValueError, TypeError) as e:
        raise UserError(str(e)) from None
    body = result.to_json(top=args.top)
    body["images"] = list(args.image) + list(args.photo)
    if args.json:
        del body["gates"]
        print(json.dumps(body))
        return 0
    what = "the prediction" if args.prediction else f"map {args.channel} of {args.target_layer}" + (f", area {list(area)}" if area else "")
    print(f"contributions of {args.earlier_layer} ({result.earlier_shape[0]} maps) to {what}; mode {args.mode}, {result.seconds:.2f} s")
    if result.region is not None:
        print(f"gated region of the earlier maps (y0, x0, y1, x1): {list(result.region)}")
    print(f"fidelity (relative squared error kept by the gates): {', '.join(f'{v:.3f}' for v in result.fidelity)}")
    for rank, row in enumerate(body["ranking"], 1):
        print(f"{rank:3d}. map {row['channel']:5d}  contribution {row['score']:.3f}")
    return 0


# ---------------------------------------------------------------------- benchmark
def bench_contribution(
    model_spec: str = "resnet50",
    size: int = 224,
    target_layer: str = "model.layer3.2",
    earlier_layer: str = "model.layer3.1",
    area_side: int = 4,
    photo: str = "chelsea",
    repeats: int = 3,
    steps: Optional[int] = None,
    seed: int = 0,
) -> Dict[str, Any]:
    """Time both modes on one photo, a mid-layer target map and a square area; compare them.

    The target channel is the one most active inside the centred ``area_side`` square of
    ``target_layer`` (random weights give no meaningful channel otherwise).
    ``sgd_seconds`` / ``quadratic_seconds``: what a dashboard request costs once the model
    is loaded: one query on a prepared :class:`ContributionSession` (the service keeps one
    per examples and layer pair), best of ``repeats`` after a warm-up, each without the
    quadratic answer the session keeps (so SGD pays for its quadratic start).
    ``*_first_request_seconds``: one whole call, its forward pass up to the target layer
    included (the first brush on a new layer pair). ``forward_seconds``: one plain forward
    pass of the model, for scale; the ``*_in_forward_passes`` ratios stay meaningful on a
    loaded machine. Agreement of the two modes: ``rank_correlation`` (Spearman over all
    maps' scores; most scores are exactly 0 in both modes, so it mostly measures whether
    the same maps are kept), ``kept_jaccard`` (the sets of maps with a non-zero score),
    ``top1_agree``, ``top10_overlap``; ``*_loss``: the objective each mode reached,
    measured through the real network (fidelity + lambda * mean gate; lower is better).
    """
    import numpy as np
    import scipy.stats
    import torch

    from tensorboard_plugin_aevis import contribution
    from tensorboard_plugin_aevis.models import load_model
    from tensorboard_plugin_aevis.sample_images import load_photo

    def best(call) -> Tuple[float, Any]:
        times, value = [], None
        for _ in range(repeats + 1):  # the first call warms up
            start = time.perf_counter()
            value = call()
            times.append(time.perf_counter() - start)
        return min(times[1:]), value

    torch.manual_seed(seed)  # torchvision models without a weights file get random weights
    model = load_model(model_spec)
    images = load_photo(photo, size=size)[None]
    captured: List[torch.Tensor] = []
    handle = model.get_submodule(target_layer).register_forward_hook(lambda m, i, o: captured.append(o))
    with torch.no_grad():
        forward_seconds, _ = best(lambda: model(images))
    handle.remove()
    height, width = captured[0].shape[2:]
    y0, x0 = (height - area_side) // 2, (width - area_side) // 2
    area = (y0, x0, y0 + area_side, x0 + area_side)
    channel = int(captured[0][0, :, area[0]:area[2], area[1]:area[3]].sum(dim=(1, 2)).argmax())
    options = {} if steps is None else {"steps": steps}
    session = contribution.ContributionSession(model, images, earlier_layer, target_layer)
    seconds, first_seconds, results = {}, {}, {}
    for mode in contribution.MODES:
        seconds[mode], results[mode] = best(lambda: (session.clear_cache(), session.feature_map(channel, area, mode=mode, **options))[1])
        first_seconds[mode], _ = best(lambda: contribution.feature_map_contributions(
            model, images, target_layer, channel, earlier_layer, area=area, mode=mode, **options))
    sgd, quad = results["sgd"], results["quadratic"]
    rho = scipy.stats.spearmanr(sgd.scores, quad.scores).statistic
    kept_sgd, kept_quad = set(np.flatnonzero(sgd.scores > 0)), set(np.flatnonzero(quad.scores > 0))
    top = 10
    lam = sgd.params["lambda"]
    return {
        "model": model_spec, "weights": "random", "size": size, "target_layer": target_layer, "channel": channel, "area": list(area),
        "earlier_layer": earlier_layer, "earlier_maps": int(sgd.earlier_shape[0]), "threads": torch.get_num_threads(),
        "crop": list(quad.crop) if quad.crop is not None else None,
        "sgd_seconds": seconds["sgd"], "quadratic_seconds": seconds["quadratic"],
        "sgd_first_request_seconds": first_seconds["sgd"], "quadratic_first_request_seconds": first_seconds["quadratic"],
        "forward_seconds": forward_seconds,
        "sgd_in_forward_passes": seconds["sgd"] / forward_seconds,
        "quadratic_in_forward_passes": seconds["quadratic"] / forward_seconds,
        "sgd_steps_run": sgd.params.get("steps_run"),
        "rank_correlation": float(rho) if rho == rho else None,
        "kept_jaccard": len(kept_sgd & kept_quad) / max(1, len(kept_sgd | kept_quad)),
        "top1_agree": sgd.ranking[0] == quad.ranking[0],
        f"top{top}_overlap": len(set(sgd.ranking[:top]) & set(quad.ranking[:top])) / top,
        "sgd_fidelity": float(sgd.fidelity[0]), "quadratic_fidelity": float(quad.fidelity[0]),
        "sgd_loss": float(sgd.fidelity[0] + lam * sgd.scores.mean()), "quadratic_loss": float(quad.fidelity[0] + lam * quad.scores.mean()),
        "params": sgd.params, "quadratic_params": quad.params,
        "goals": {"sgd_seconds": 1.0, "quadratic_seconds": 0.1},
    }
