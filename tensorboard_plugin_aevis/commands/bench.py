"""``aevis bench``: time the datapath extraction against the cost of its gradient steps.

Measured in one run on random images (random weights for torchvision models):

- ``step_seconds``: one gated forward+backward pass for one image (median of 5);
- ``extract_seconds``: a source/adversarial/target chain with ``extract_datapaths``;
- ``steps`` / ``stage_steps``: the gated steps the chain ran, in all and per chain stage
  (a stage's batched fit plus its batched tempered and plain refits, ``params["fit_steps"]``);
- ``limit_seconds``: the steps the chain ran times ``step_seconds`` (each chain stage
  holds one image here), so ``overhead_ratio = extract_seconds / limit_seconds`` is
  what the extraction costs beyond its gradient steps (layer tracing, the ungated
  pass, binarised checks, bookkeeping);
- ``converged_seconds`` and ``converged_steps``: the same chain with the engine's
  defaults (no ``--steps`` limit: each stage stops on convergence, docs/method.md),
  its time and its gated steps in all (every stage's fits and refits, as ``steps``);
- ``batched_speedup``: ``--candidates`` target images extracted one call each,
  divided by the time for all of them in one batched call (``--batched-steps``
  steps each, no early stop difference since every call runs the same steps).

Benchmarks are registered in ``BENCHES`` (name -> function(args) -> dict); a flag
per benchmark selects it, ``extraction`` is the default.
"""

from __future__ import annotations

import json
import statistics
import time
from typing import Any, Callable, Dict

import torch

from ..cli import UserError

BENCHES: Dict[str, Callable[[Any], Dict[str, Any]]] = {}


def add_parser(subparsers) -> None:
    parser = subparsers.add_parser(
        "bench",
        help="time datapath extraction (overhead, batching) on random images",
        description=__doc__.split("\n\n")[0],
    )
    parser.add_argument("--model", default="resnet50", help="torchvision name, efficientnet-lite0 or module:factory (default resnet50, random weights)")
    parser.add_argument("--size", type=int, default=224, help="image height and width in pixels (default 224)")
    parser.add_argument("--method", default="constrained", choices=["constrained", "dgr"])
    parser.add_argument("--steps", type=int, default=30, help="step limit per chain stage (default 30)")
    parser.add_argument("--candidates", type=int, default=16, help="target images for the batched-vs-one-by-one timing (default 16)")
    parser.add_argument("--batched-steps", type=int, default=5, help="steps per call in the batched timing (default 5)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--contribution", dest="bench", action="store_const", const="contribution",
                        help="time contribution analysis instead: SGD vs quadratic on resnet50 layer3 (commands/contribution.py)")
    parser.set_defaults(func=run, bench="extraction")


def run(args) -> int:
    for name, value in (("--size", args.size), ("--steps", args.steps), ("--candidates", args.candidates), ("--batched-steps", args.batched_steps)):
        if value < 1:
            raise UserError(f"{name} must be a positive integer, got {value}")
    result = BENCHES[args.bench](args)
    if args.json:
        print(json.dumps(result))
    else:
        for key, value in result.items():
            print(f"{key:>20}: {value}")
    return 0


def _median_seconds(fn: Callable[[], Any], repeats: int) -> float:
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        if torch.cuda.is_available():
            torch.cuda.synchronize()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def _stage_steps(params: Dict[str, Any], stage) -> int:
    """Gated steps one chain stage ran: its batched first fit plus, where some of its examples were
    refitted, the batched tempered and plain refits (``fit_steps``; docs/method.md)."""
    fits = [params["fit_steps"][i] for i in stage]
    return sum(max((f[kind] for f in fits if f[kind] is not None), default=0) for kind in ("fit", "tempered", "plain"))


def bench_extraction(args) -> Dict[str, Any]:
    """The extraction benchmark (see the module docstring); returns the JSON fields."""
    from ..extraction import extract_datapaths
    from ..gating import GateHooks, select_layers
    from ..models import exact_float32, load_model

    try:
        model = load_model(args.model, device=args.device)
    except (ValueError, ImportError) as e:
        raise UserError(str(e)) from e
    if getattr(model, "input_size", None) is not None:
        model.input_size = (args.size, args.size)  # random weights: any size the network accepts
    device = torch.device(args.device)
    gen = torch.Generator().manual_seed(args.seed)
    channels = model.in_channels
    triplet = torch.rand(3, channels, args.size, args.size, generator=gen).to(device)
    candidates = torch.rand(args.candidates, channels, args.size, args.size, generator=gen).to(device)

    layers = select_layers(model, triplet[:1])
    with GateHooks(model, layers, record=True) as probe, torch.no_grad():
        model(triplet[:1])
    sizes = [a.shape[1] for a in probe.activations]
    with GateHooks(model, layers) as hooks, exact_float32():  # the arithmetic the extraction uses

        def gated_step() -> None:
            z = torch.ones(1, sum(sizes), device=device, requires_grad=True)
            hooks.gates = torch.split(z, sizes, dim=1)
            loss = torch.softmax(model(triplet[:1]), dim=1).square().sum() + z.sum()
            torch.autograd.grad(loss, z)
            hooks.gates = None

        gated_step()  # warm-up
        step_seconds = _median_seconds(gated_step, 5)

    start = time.perf_counter()
    analysis = extract_datapaths(
        model, triplet, ["source", "adversarial", "target"], method=args.method, steps=args.steps,
        device=args.device, keep_activation_maps=False,
    )
    extract_seconds = time.perf_counter() - start
    stage_steps = [_stage_steps(analysis.params, stage) for stage in analysis.params["order"]]
    limit_seconds = sum(stage_steps) * step_seconds

    start = time.perf_counter()
    converged = extract_datapaths(model, triplet, ["source", "adversarial", "target"], method=args.method,
                                  device=args.device, keep_activation_maps=False)
    converged_seconds = time.perf_counter() - start
    converged_steps = sum(_stage_steps(converged.params, stage) for stage in converged.params["order"])

    def batched() -> None:
        extract_datapaths(model, candidates, ["target"] * args.candidates, method=args.method,
                          steps=args.batched_steps, device=args.device, keep_activation_maps=False)

    def one_by_one() -> None:
        for k in range(args.candidates):
            extract_datapaths(model, candidates[k : k + 1], ["target"], method=args.method,
                              steps=args.batched_steps, device=args.device, keep_activation_maps=False)

    batched_seconds = _median_seconds(batched, 1)
    one_by_one_seconds = _median_seconds(one_by_one, 1)
    return {
        "model": args.model,
        "size": args.size,
        "method": args.method,
        "device": str(device),
        "threads": torch.get_num_threads(),
        "gated_layers": len(layers),
        "gates": sum(sizes),
        "steps": sum(stage_steps),
        "stage_steps": stage_steps,
        "step_limit": args.steps,
        "step_seconds": round(step_seconds, 4),
        "extract_seconds": round(extract_seconds, 3),
        "limit_seconds": round(limit_seconds, 3),
        "overhead_ratio": round(extract_seconds / limit_seconds, 3),
        "converged_seconds": round(converged_seconds, 3),
        "converged_steps": converged_steps,
        "converged_kept_fraction": [round(float(k), 4) for k in converged.kept_fraction()],
        "candidates": args.candidates,
        "batched_steps": args.batched_steps,
        "batched_seconds": round(batched_seconds, 3),
        "one_by_one_seconds": round(one_by_one_seconds, 3),
        "batched_speedup": round(one_by_one_seconds / batched_seconds, 3),
        "label_preserved": all(e.label_preserved for e in analysis.examples),
        "kept_fraction": [round(float(k), 4) for k in analysis.kept_fraction()],
    }


BENCHES["extraction"] = bench_extraction


def _bench_contribution(args) -> Dict[str, Any]:
    from .contribution import bench_contribution

    return bench_contribution(args.model, args.size, seed=args.seed)


BENCHES["contribution"] = _bench_contribution
