"""The entry point: extract the datapaths of N images into an :class:`~..analysis.Analysis`."""

from __future__ import annotations

import dataclasses
import time
from typing import Any, Dict, List, Optional, Sequence, Union

import numpy as np
import torch
from torch import nn

from ..analysis import Analysis, ExampleRecord, LayerRecord
from ..gating import GateHooks, LayerSpec
from ..models import exact_float32
from . import inputs
from .fit import CHECK_EVERY, CONVERGENCE_TOL, CONVERGENCE_WINDOW, GateFit
from .methods import fidelity_temperatures, method_named
from .options import ExtractionOptions, options_from


def extract_datapaths(
    model: nn.Module,
    images: Union[torch.Tensor, np.ndarray],
    roles: Sequence[str],
    names: Optional[Sequence[str]] = None,
    *,
    method: str = "constrained",
    layers: LayerSpec = "auto",
    class_names: Optional[Sequence[str]] = None,
    device: Optional[str] = None,
    progress: bool = False,
    keep_activation_maps: bool = True,
    options: Optional[ExtractionOptions] = None,
    **overrides: Any,
) -> Analysis:
    """Extract the datapaths of N images (docs/method.md).

    Args:
        model: maps (B, C, H, W) images in [0, 1] to logits (B, K) (normalisation inside the model).
        images: (N, C, H, W) in [0, 1], tensor or array.
        roles: N strings from ``("source", "adversarial", "target")``.
        names: N display names (default: the role, numbered when repeated).
        method: ``"constrained"`` (the paper's Eq. 5 chain) or ``"dgr"`` (the baseline).
        layers: see :func:`..gating.select_layers`.
        class_names: K names (default: the model's ``class_names`` attribute, else the label number).
        device: ``"cpu"`` or ``"cuda"`` (default: where the model is); the model is moved back after.
        progress: show a tqdm bar.
        keep_activation_maps: store the ungated feature maps (N, C_l, H_l, W_l).
        options: an :class:`ExtractionOptions`; ``overrides`` (its field names: ``steps``, ``lr``,
            ``lambda_``, ``gamma``, ``threshold``, ``order``, ``init_noise``, ``seed``, ``starts``,
            ``start_noise``, ``warmup``, ``multiplicative``) replace its fields.
    Returns:
        The validated analysis. ``params`` records the resolved options, ``steps_run`` and
        ``discarded_steps`` per example, ``fidelity_temperature``, ``plain_refit`` per example
        (None: not refitted; ``"used"``: its datapath held every map and its last step had lost the
        label, and the plain-Adam refit's datapath, which does not hold every map, is returned;
        ``"whole"``: the refit's held every map too, the first fit's is returned), ``fit_steps`` per
        example (the steps of its first fit, ``"fit"``, and of its tempered and plain refits,
        ``"tempered"`` / ``"plain"``, None where not run) and the seconds taken; ``stability`` is set when ``starts`` > 1.
    Raises:
        TypeError / ValueError naming the bad argument and its fix. The model's weights,
        ``requires_grad`` flags, train/eval modes and device are unchanged.
    """
    kind = method_named(method)
    opts = options_from(options, overrides).validated().with_defaults(kind.defaults)
    if method == "dgr" and opts.gamma != 0:
        raise ValueError("the DGR baseline has no constraint term; leave gamma unset or use method='constrained'")
    generator = _generator(opts)
    x = inputs.as_images(images)
    n = x.shape[0]
    roles = inputs.check_roles(roles, n)
    names = inputs.check_names(names, roles)
    stages = [list(range(n))] if method == "dgr" else inputs.stages_of(opts.order, roles)
    k_starts = opts.starts
    started = time.perf_counter()
    with inputs.prepared(model, device) as dev, exact_float32():
        x = x.to(dev)
        inputs.check_fits(model, x)
        layer_names, blocks = inputs.select(model, x[:1], layers)
        with GateHooks(model, layer_names, record=True) as hooks:
            with torch.no_grad():
                logits = model(x)
            inputs.check_logits(logits, n)
            logits = logits.float()
            clean_probs = torch.softmax(logits, dim=1)
            labels = clean_probs.argmax(dim=1)
            saturated = fidelity_temperatures(logits) if kind.refits_saturated else torch.ones(n, device=dev)
            activations = [a.float() for a in hooks.activations]
            hooks.record = False
            hooks.activations = [None] * len(layer_names)
            sizes = [a.shape[1] for a in activations]
            clamp = kind.clamp(bool(blocks))
            fit = GateFit(model, hooks, sizes, kind, opts, clamp, generator)
            plain = None  # plain Adam (no warm-up, additive step), for rows whose fit failed: every map, label lost at the end
            if kind.refits_whole_plainly and (opts.warmup > 0 or opts.multiplicative):
                plain = GateFit(model, hooks, sizes, kind, dataclasses.replace(opts, warmup=0, multiplicative=False),
                                clamp, generator)
            out = _Outputs(n, sum(sizes), k_starts, labels, opts.threshold, dev)
            bar = _progress_bar(progress, opts.steps * len(stages))
            try:
                for stage in stages:
                    rows = [i for i in stage for _ in range(k_starts)]  # K rows per example, one batch
                    noise = torch.tensor([opts.init_noise if r % k_starts == 0 else max(opts.init_noise, opts.start_noise)
                                          for r in range(len(rows))], dtype=torch.float64)
                    anchors = out.gates[out.done]
                    ones = torch.ones(len(rows), device=dev)
                    result = fit.run(x[rows], clean_probs[rows], ones, labels[rows], anchors, noise, bar)
                    discarded = [0] * len(rows)
                    fits = [{"fit": len(h), "tempered": None, "plain": None} for h in result["histories"]]
                    temperatures = ones.clone()
                    retry = [r for r, i in enumerate(rows) if bool(result["whole"][r]) and float(saturated[i]) > 1]
                    if retry:  # the fidelity temperature (docs/method.md): fit these rows again at T_x
                        for r in retry:
                            discarded[r] = len(result["histories"][r])
                        temperatures[retry] = saturated[[rows[r] for r in retry]]
                        refit = _refit(fit, retry, rows, x, logits, temperatures, labels, anchors, noise)
                        for k, r in enumerate(retry):
                            fits[r]["tempered"] = len(refit["histories"][k])
                            for key, value in refit.items():
                                result[key][r] = value[k]
                    refitted = [None] * len(rows)
                    again = [r for r in range(len(rows)) if bool(result["every_map"][r]) and bool(result["ended_lost"][r])] \
                        if plain is not None else []
                    if again:  # the plain refit (docs/method.md): plain Adam before a datapath of every map
                        refit = _refit(plain, again, rows, x, logits, temperatures, labels, anchors, noise)
                        for k, r in enumerate(again):
                            used = not bool(refit["every_map"][k])
                            refitted[r] = "used" if used else "whole"
                            fits[r]["plain"] = len(refit["histories"][k])
                            discarded[r] += len(result["histories"][r]) if used else len(refit["histories"][k])
                            if used:
                                for key, value in refit.items():
                                    result[key][r] = value[k]
                    out.store(stage, result, temperatures, discarded, refitted, fits)
            finally:
                if bar is not None:
                    bar.close()
    seconds = time.perf_counter() - started

    names_k = list(class_names) if class_names is not None else getattr(model, "class_names", None)
    confidences = clean_probs.gather(1, labels[:, None])[:, 0]
    examples = [
        ExampleRecord(
            name=names[i],
            role=roles[i],
            label=int(labels[i]),
            class_name=_class_name(names_k, int(labels[i])),
            confidence=float(confidences[i]),
            gated_label=int(out.gated_labels[i]),
            binary_label=int(out.binary_labels[i]),
            loss_history=[float(v) for v in out.histories[i]],
            threshold=None if float(out.thresholds[i]) == opts.threshold else float(out.thresholds[i]),
        )
        for i in range(n)
    ]
    layer_records = [LayerRecord(name, a.shape[1], a.shape[2], a.shape[3]) for name, a in zip(layer_names, activations)]

    def split(flat: torch.Tensor) -> List[np.ndarray]:
        return [g.cpu().numpy().astype(np.float32) for g in torch.split(flat, sizes, dim=1)]

    params = {
        "layers": layers if isinstance(layers, str) else "explicit",
        "gated_layers": list(layer_names),
        "steps": opts.steps,
        "lr": opts.lr,
        "lambda": opts.lambda_,
        "gamma": opts.gamma,
        "threshold": opts.threshold,
        "clamp": [0.0, clamp],
        "order": [[int(i) for i in s] for s in stages],
        "steps_run": [len(h) for h in out.histories],
        "discarded_steps": out.discarded,
        "fidelity_temperature": [round(float(t), 4) for t in out.temperatures],
        "plain_refit": out.refitted,
        "fit_steps": out.fit_steps,
        "init_noise": opts.init_noise,
        "seed": opts.seed,
        "starts": k_starts,
        "start_noise": opts.start_noise if k_starts > 1 else None,
        "warmup": opts.warmup,
        "multiplicative": opts.multiplicative,
        "seconds": round(seconds, 3),
        "device": str(dev),
        "check_every": CHECK_EVERY,
        **kind.description(CONVERGENCE_TOL, CONVERGENCE_WINDOW),
    }
    analysis = Analysis(
        method=method,
        params=params,
        examples=examples,
        layers=layer_records,
        images=x.detach().cpu().float().numpy(),
        gates=split(out.gates),
        threshold=float(opts.threshold),
        max_activations=[a.amax(dim=(2, 3)).cpu().numpy() for a in activations],
        activation_maps=[a.cpu().numpy() for a in activations] if keep_activation_maps else None,
        stability=split(out.stability) if k_starts > 1 else None,
    )
    analysis.validate()
    return analysis


class _Outputs:
    """Per-example results as the chain fills them: the chosen start's gates, labels, threshold,
    history, temperature and plain-refit outcome, and the fraction of the K starts whose binary datapath holds each map."""

    def __init__(self, n: int, n_gates: int, k: int, labels: torch.Tensor, threshold: float, device: torch.device):
        self.k = k
        self.gates = torch.ones(n, n_gates, device=device)
        self.stability = torch.zeros(n, n_gates, device=device)
        self.gated_labels = labels.clone()
        self.binary_labels = labels.clone()
        self.thresholds = torch.full((n,), threshold, dtype=torch.float64)
        self.temperatures = torch.ones(n)
        self.histories: List[List[float]] = [[] for _ in range(n)]
        self.discarded = [0] * n
        self.refitted: List[Optional[str]] = [None] * n
        self.fit_steps: List[Dict[str, Optional[int]]] = [{"fit": 0, "tempered": None, "plain": None} for _ in range(n)]
        self.done: List[int] = []

    def store(self, stage: List[int], result: Dict[str, Any], temperatures: torch.Tensor, discarded: List[int],
              refitted: List[Optional[str]], fits: List[Dict[str, Optional[int]]]) -> None:
        """Keep, per example of ``stage``, its best start: the lowest fidelity temperature (Eq. 5 as
        written before a tempered refit), then the lowest loss; the first start on ties. ``refitted``
        holds each row's plain-refit outcome (None, ``"used"`` or ``"whole"``), ``fits`` each row's
        steps per fit (``"fit"``, ``"tempered"``, ``"plain"``; None for a refit not run)."""
        k = self.k
        for j, i in enumerate(stage):
            block = range(j * k, (j + 1) * k)
            best = min(block, key=lambda r: (float(temperatures[r]), float(result["loss"][r]), r))
            self.gates[i] = result["gates"][best]
            self.gated_labels[i] = result["gated_labels"][best]
            self.binary_labels[i] = result["binary_labels"][best]
            self.thresholds[i] = result["thresholds"][best]
            self.histories[i] = result["histories"][best]
            self.temperatures[i] = float(temperatures[best])
            self.discarded[i] = discarded[best]
            self.refitted[i] = refitted[best]
            self.fit_steps[i] = fits[best]
            if k > 1:
                cuts = result["thresholds"][list(block)].to(device=result["gates"].device, dtype=torch.float32)
                selected = result["gates"][list(block)] > cuts[:, None]
                self.stability[i] = selected.float().mean(dim=0)
        self.done.extend(stage)


def _refit(fit: GateFit, picked: List[int], rows: List[int], x: torch.Tensor, logits: torch.Tensor,
           temperatures: torch.Tensor, labels: torch.Tensor, anchors: torch.Tensor, noise: torch.Tensor) -> Dict[str, Any]:
    """``fit`` run again on the batch rows ``picked`` (indices into ``rows``, the stage's example of
    each row) against ``softmax(logits / T)`` at their temperatures ``temperatures[picked]``.

    Returns:
        :meth:`GateFit.run`'s result for the picked rows, in their order.
    """
    examples = [rows[r] for r in picked]
    temps = temperatures[picked]
    tempered = torch.softmax(logits[examples] / temps[:, None], dim=1)
    return fit.run(x[examples], tempered, temps, labels[examples], anchors, noise[picked], None)


def _generator(opts: ExtractionOptions) -> Optional[torch.Generator]:
    """The CPU generator for the perturbed starts (None when no start is perturbed)."""
    if opts.init_noise == 0 and opts.starts == 1:
        return None
    generator = torch.Generator()
    if opts.seed is None:
        generator.seed()
    else:
        generator.manual_seed(opts.seed)
    return generator


def _class_name(class_names: Optional[Sequence[str]], label: int) -> str:
    if class_names is not None and 0 <= label < len(class_names):
        return str(class_names[label])
    return str(label)


def _progress_bar(enabled: bool, total: int):
    if not enabled:
        return None
    from tqdm import tqdm

    return tqdm(total=total, desc="datapaths", unit="step")
