"""Datapath extraction: the constrained chain (paper Eq. 4-5) and the DGR baseline.

Both methods fit one gate ``z`` per feature map of the gated layers (see
:mod:`.gating`) with the model's weights frozen, in eval mode, and return an
:class:`~.analysis.Analysis`.

**Constrained** (the paper's method). Per example, minimise Eq. 5::

    ||p(x) - p(x; z)||^2  +  lambda_x * ||z||_1  +  gamma_x * sum_j ||z - z_j*||_2

with ``p`` the softmax prediction and ``z_j*`` the datapaths extracted earlier in the
chain (Eq. 4). Scaling of the two weights (documented choice; the paper gives none)::

    lambda_x = lambda * ||p(x)||^2 / n        gamma_x = gamma * ||p(x)||^2 / sqrt(n)

``n`` is the number of gates: the fidelity term is at most 2 while ``||z||_1``
counts thousands of gates (method-notes Sec. 1), so the L1 term becomes the *mean*
gate and the constraint the *root-mean-square* gate difference, both in [0, 1]
whatever the network's size. ``||p(x)||^2`` is the scale of the fidelity term for
this example: a prediction with confidence 0.2 can only lose ~0.04 of fidelity, so
without this factor the L1 term would delete its label; with it, one ``lambda``
works for confident and unsure predictions alike (measured on EfficientNet-Lite0
photos with confidences 0.2 to 0.94). Gates start at 1 (the full network; or at
``1 - init_noise * U(0, 1)`` for perturbed starts), take Adam
steps (elementwise, so every example keeps its own optimiser state) and are clamped
to [0, 1] after each step. An example stops when its loss stayed within
``CONVERGENCE_TOL`` (relative) over the last ``CONVERGENCE_WINDOW`` steps, or at ``steps``.

**Fidelity temperature** (for confident predictions whose fit fails). The gradient of
the fidelity with respect to the logits carries the softmax Jacobian ``q_c (1 - q_c)``,
which vanishes as the prediction saturates: for an adversarial example with confidence
0.9999 the first Adam step (``lr`` off every gate, the fidelity gradient being 0 at
``z = 1``) flips the label, and from the flipped, equally saturated prediction the
fidelity cannot pull it back, so no iterate keeps the label and the whole network is
returned (the chained source and target datapaths, pulled towards it by the
constraint, stay dense too: measured 100 / 100 / 99 % kept on the demo's cat ->
espresso triplet). So an example whose fit returned the whole network while its
ungated confidence is above ``FIDELITY_MAX_CONFIDENCE`` (0.95) is fitted again (before
the next chain stage) comparing the predictions at the temperature ``T_x > 1`` that
brings that confidence down to 0.95: ``p(x) = softmax(logits / T_x)`` (as in
distillation; the ranking of the classes and the label are unchanged; the scaling
``||p(x)||^2`` above uses the tempered prediction too). Every other example keeps
Eq. 5 as written (``T_x = 1``): applying the temperature to every confident example
made the datapaths of a confident model denser (FashionCNN, 32 MI-FGSM chains of 7
images: mean kept fraction 0.49 -> 0.54) and its Fashion-MNIST top-1 score lower
(``docs/evaluation.md``). ``params["fidelity_temperature"]`` records the ``T_x`` each
returned datapath was fitted at; ``loss_history`` and ``params["steps_run"]`` are that
fit's, ``params["discarded_steps"]`` the steps of the T = 1 fit it replaced (else 0).

The chain: by default the adversarial examples first, then the source examples
(constrained by the adversarial datapaths), then all target examples as ONE batch,
each constrained by the adversarial and source datapaths (not by each other: the
candidate targets are alternatives, and batching them keeps N candidates as fast as
one). Examples of one stage run as one batch of independent gate sets in a single
forward/backward pass per step. ``order`` changes the chain (see
:func:`extract_datapaths`).

**DGR** (Wang et al. 2018, method-notes Sec. 2): gates start at 1, loss is the
distillation cross-entropy ``-sum_c p_c(x) log p_c(x; z)`` plus
``lambda * sum |z|`` (plain sum, lambda 0.05), SGD lr 0.1 momentum 0.9 for 30 steps,
clamped to [0, 100] when any gated layer is a merging (residual / concatenating)
block and to [0, 5] otherwise; every example on its own (no chain), all in one
batch. Threshold ``z > 0``.

**Best iterate.** Each step's forward pass gives the gated prediction of the current
gates for free; the lowest-loss iterate whose continuous AND binarised
(``z > threshold``) datapaths both keep the ungated label is returned. The iterates of
every ``check_every``-th step (and the last) are the candidates: after the fit they are
tried in order of loss, one batched forward pass (no backward) per round, and an
example stops at the first whose binarised datapath keeps the label; usually the
first round settles every example. When no checked iterate keeps both labels, the
lowest-loss iterate keeping the continuous label is returned, and when none does, the start ``z = 1`` (the whole
network, which keeps the label by definition). The start is only this fallback: for
an unsure prediction the loss of ``z = 1`` (no fidelity loss, every gate paid for)
can stay below that of every sparse datapath within the step limit.

**Label repair** (constrained method). When the binarised datapath of the returned
gates still loses the label, that example's threshold is lowered to keep the top-k
gates by value with the smallest k that restores the label (binary search over k,
one batched forward pass per step, ~log2(number of gates) passes; every gate, the
whole network, keeps the label, so the search always succeeds). The datapath stays
"gates above a threshold", now a per-example one, stored as
:attr:`.analysis.ExampleRecord.threshold` (None where the analysis's threshold
applies); :meth:`.analysis.Analysis.binary` uses it. The continuous gates are not
changed. So every binarised datapath keeps its label. DGR has no repair: the
baseline stays as published.
"""

from __future__ import annotations

import contextlib
import math
import time
from typing import Any, Dict, Iterator, List, Optional, Sequence, Union

import numpy as np
import torch
from torch import nn

from .analysis import ROLES, Analysis, ExampleRecord, LayerRecord
from .gating import GateHooks, LayerSpec, select_layers_and_blocks
from .models import exact_float32

DEFAULT_ORDER = ("adversarial", "source", "target")
DEFAULTS: Dict[str, Dict[str, Any]] = {
    "constrained": {"steps": 100, "lr": 0.1, "lambda_": 0.1, "gamma": 0.5, "threshold": 0.5},
    "dgr": {"steps": 30, "lr": 0.1, "lambda_": 0.05, "gamma": 0.0, "threshold": 0.0},
}
ADAM_BETAS = (0.9, 0.999)
ADAM_EPS = 1e-8
DGR_MOMENTUM = 0.9
DGR_CLAMP_RESIDUAL = 100.0
DGR_CLAMP_PLAIN = 5.0
FIDELITY_MAX_CONFIDENCE = 0.95
CONVERGENCE_TOL = 1e-3
CONVERGENCE_WINDOW = 10
CHECK_EVERY = 5
_NORM_EPS = 1e-12  # keeps the gradient of ||z - z_j|| finite at z = z_j


def extract_datapaths(
    model: nn.Module,
    images: Union[torch.Tensor, np.ndarray],
    roles: Sequence[str],
    names: Optional[Sequence[str]] = None,
    *,
    method: str = "constrained",
    layers: LayerSpec = "auto",
    order: Optional[Sequence[Union[str, int]]] = None,
    steps: Optional[int] = None,
    lr: Optional[float] = None,
    lambda_: Optional[float] = None,
    gamma: Optional[float] = None,
    threshold: Optional[float] = None,
    class_names: Optional[Sequence[str]] = None,
    device: Optional[str] = None,
    progress: bool = False,
    keep_activation_maps: bool = True,
    init_noise: float = 0.0,
    seed: Optional[int] = None,
) -> Analysis:
    """Extract the datapaths of N images and return the filled :class:`Analysis`.

    ``model``: maps (B, C, H, W) images in [0, 1] to logits (B, K) (normalisation
    inside the model). ``images``: (N, C, H, W) in [0, 1]. ``roles``: N strings from
    ``("source", "adversarial", "target")``. ``names``: N display names (default:
    the role, numbered when repeated). ``method``: ``"constrained"`` or ``"dgr"``.
    ``layers``: see :func:`.gating.select_layers`. ``order``: the chain, a sequence
    of stages, each a role (all examples with that role, one batch) or an example
    index (a stage of its own); every example exactly once; default adversarial,
    source, target (ignored by DGR, which has no chain). ``steps``, ``lr``,
    ``lambda_``, ``gamma``, ``threshold``: see :data:`DEFAULTS` and the module
    docstring. ``class_names``: K names (default: the model's ``class_names``
    attribute if it has one, else the label number). ``device``: ``"cpu"`` or
    ``"cuda"`` (default: where the model is); the model is moved back afterwards.
    ``keep_activation_maps``: store the ungated feature maps (N, C_l, H_l, W_l).
    ``init_noise`` in [0, 1) and ``seed``: perturbed initialisations (e.g. for a
    stability measure): every stage's gates start at ``1 - init_noise * U(0, 1)``,
    drawn from a ``torch.Generator`` seeded with ``seed`` (deterministic for a given
    seed; ``init_noise = 0`` is the default start, all ones).
    The model's weights, ``requires_grad`` flags and train/eval modes are unchanged.
    """
    if method not in DEFAULTS:
        raise ValueError(f"unknown method {method!r}; use 'constrained' (the paper's) or 'dgr' (the baseline)")
    cfg = _resolve_params(method, steps, lr, lambda_, gamma, threshold)
    init = _init_generator(init_noise, seed)
    x = _as_images(images)
    n = x.shape[0]
    roles = _check_roles(roles, n)
    names = _check_names(names, roles)
    stages = [list(range(n))] if method == "dgr" else _stages(order, roles)
    started = time.perf_counter()
    with _prepared(model, device) as dev, exact_float32():
        x = x.to(dev)
        _check_fits(model, x)
        layer_names, blocks = _select(model, x[:1], layers)
        with GateHooks(model, layer_names, record=True) as hooks:
            with torch.no_grad():
                logits = model(x)
            _check_logits(logits, n)
            clean_probs = torch.softmax(logits.float(), dim=1)
            labels = clean_probs.argmax(dim=1)
            saturated = _fidelity_temperatures(logits.float()) if method == "constrained" else torch.ones(n, device=dev)
            temperatures = torch.ones(n, device=dev)  # applied: saturated[i] only where the fit at T = 1 failed
            activations = [a.float() for a in hooks.activations]
            hooks.record = False
            hooks.activations = [None] * len(layer_names)
            sizes = [a.shape[1] for a in activations]
            clamp = (DGR_CLAMP_RESIDUAL if blocks else DGR_CLAMP_PLAIN) if method == "dgr" else 1.0
            fit = _GateFit(model, hooks, sizes, method, cfg, clamp, init_noise, init)
            gates = torch.ones(n, sum(sizes), device=dev)
            gated_labels = labels.clone()
            binary_labels = labels.clone()
            thresholds = torch.full((n,), cfg["threshold"], dtype=torch.float64)
            histories: List[List[float]] = [[] for _ in range(n)]
            discarded = [0] * n  # steps of a T = 1 fit replaced by the tempered refit
            done: List[int] = []
            bar = _progress_bar(progress, cfg["steps"] * len(stages))
            try:
                for stage in stages:
                    result = fit.run(x[stage], clean_probs[stage], temperatures[stage], labels[stage], gates[done], bar)
                    retry = [k for k, i in enumerate(stage) if bool(result["whole"][k]) and float(saturated[i]) > 1]
                    if retry:  # the fidelity temperature (module docstring): fit these again at T_x
                        rows = [stage[k] for k in retry]
                        for k, i in zip(retry, rows):
                            discarded[i] = len(result["histories"][k])
                        temperatures[rows] = saturated[rows]
                        tempered = torch.softmax(logits.float()[rows] / temperatures[rows, None], dim=1)
                        _replace_rows(result, retry, fit.run(x[rows], tempered, temperatures[rows], labels[rows], gates[done], None))
                    gates[stage] = result["gates"]
                    gated_labels[stage] = result["gated_labels"]
                    binary_labels[stage] = result["binary_labels"]
                    thresholds[stage] = result["thresholds"]
                    for k, i in enumerate(stage):
                        histories[i] = result["histories"][k]
                    done.extend(stage)
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
            gated_label=int(gated_labels[i]),
            binary_label=int(binary_labels[i]),
            loss_history=[float(v) for v in histories[i]],
            threshold=None if float(thresholds[i]) == cfg["threshold"] else float(thresholds[i]),
        )
        for i in range(n)
    ]
    layer_records = [LayerRecord(name, a.shape[1], a.shape[2], a.shape[3]) for name, a in zip(layer_names, activations)]
    gate_arrays = [g.cpu().numpy().astype(np.float32) for g in torch.split(gates, sizes, dim=1)]
    params = {
        "layers": layers if isinstance(layers, str) else "explicit",
        "gated_layers": list(layer_names),
        "steps": cfg["steps"],
        "lr": cfg["lr"],
        "lambda": cfg["lambda_"],
        "gamma": cfg["gamma"],
        "threshold": cfg["threshold"],
        "clamp": [0.0, clamp],
        "order": [[int(i) for i in s] for s in stages],
        "steps_run": [len(h) for h in histories],
        "discarded_steps": discarded,
        "fidelity_temperature": [round(float(t), 4) for t in temperatures],
        "init_noise": float(init_noise),
        "seed": None if seed is None else int(seed),
        "seconds": round(seconds, 3),
        "device": str(dev),
        **_method_description(method),
    }
    analysis = Analysis(
        method=method,
        params=params,
        examples=examples,
        layers=layer_records,
        images=x.detach().cpu().float().numpy(),
        gates=gate_arrays,
        threshold=float(cfg["threshold"]),
        max_activations=[a.amax(dim=(2, 3)).cpu().numpy() for a in activations],
        activation_maps=[a.cpu().numpy() for a in activations] if keep_activation_maps else None,
    )
    analysis.validate()
    return analysis


class _GateFit:
    """Fits the gates of one batch of examples (one chain stage), B independent gate sets."""

    def __init__(self, model: nn.Module, hooks: GateHooks, sizes: List[int], method: str, cfg: Dict[str, Any], clamp: float,
                 init_noise: float = 0.0, init: Optional[torch.Generator] = None):
        self.init_noise = init_noise
        self.init = init
        self.model = model
        self.hooks = hooks
        self.sizes = sizes
        self.n_gates = sum(sizes)
        self.method = method
        self.cfg = cfg
        self.clamp = clamp

    def forward(self, x: torch.Tensor, gates: torch.Tensor) -> torch.Tensor:
        """Logits (B, K) of the network with gates (B, n_gates) applied."""
        self.hooks.gates = torch.split(gates, self.sizes, dim=1)
        try:
            return self.model(x).float()
        finally:
            self.hooks.gates = None

    def loss(self, logits: torch.Tensor, clean_probs: torch.Tensor, temperatures: torch.Tensor, z: torch.Tensor,
             anchors: torch.Tensor) -> torch.Tensor:
        """Per-example loss (B,) of the method's objective (module docstring); ``clean_probs`` (B, K) is the
        ungated prediction at the fidelity temperatures (B,) (all 1 for DGR)."""
        lam, gamma = self.cfg["lambda_"], self.cfg["gamma"]
        if self.method == "dgr":
            distill = -(clean_probs * torch.log_softmax(logits, dim=1)).sum(dim=1)
            return distill + lam * z.abs().sum(dim=1)
        fidelity = ((torch.softmax(logits / temperatures[:, None], dim=1) - clean_probs) ** 2).sum(dim=1)
        strength = (clean_probs**2).sum(dim=1)  # ||p(x)||^2: the scale of the fidelity term for x
        loss = fidelity + lam * strength * z.abs().sum(dim=1) / self.n_gates
        if gamma > 0 and anchors.shape[0] > 0:
            sq = ((z[:, None, :] - anchors[None, :, :]) ** 2).sum(dim=2)  # (B, A)
            loss = loss + gamma * strength * torch.sqrt(sq + _NORM_EPS).sum(dim=1) / math.sqrt(self.n_gates)
        return loss

    def start(self, b: int, device: torch.device) -> torch.Tensor:
        """Initial gates (b, n_gates): ones, or ``1 - init_noise * U(0, 1)`` drawn from the seeded generator."""
        if self.init_noise == 0:
            return torch.ones(b, self.n_gates, device=device)
        noise = torch.rand(b, self.n_gates, generator=self.init)  # on the CPU: the same draw on every device
        return (1.0 - self.init_noise * noise).to(device)

    def binarise(self, z: torch.Tensor) -> torch.Tensor:
        return (z > self.cfg["threshold"]).to(z.dtype)

    def run(self, x: torch.Tensor, clean_probs: torch.Tensor, temperatures: torch.Tensor, labels: torch.Tensor,
            anchors: torch.Tensor, bar: Any) -> Dict[str, Any]:
        """Fit gates for x (B, C, H, W); clean_probs (B, K) and temperatures (B,) as in :meth:`loss`;
        anchors (A, n_gates) are the earlier datapaths. Returns per example the gates, the gated and
        binarised labels, loss histories, thresholds and ``whole`` (the whole network was returned)."""
        b = x.shape[0]
        steps, lr = self.cfg["steps"], self.cfg["lr"]
        z = self.start(b, x.device)
        state1 = torch.zeros_like(z)  # Adam first moment / SGD momentum buffer
        state2 = torch.zeros_like(z)  # Adam second moment
        running = [True] * b  # per example: still fitting (the host's copy of ``active``)
        active = torch.ones(b, dtype=torch.bool, device=x.device)
        whole = torch.ones(b, self.n_gates, device=x.device)  # the fallback: the whole network
        best_cont = (whole.clone(), torch.full((b,), math.inf, device=x.device))
        checked: List[torch.Tensor] = []  # the gates (b, n_gates) at the check steps
        checked_loss: List[torch.Tensor] = []  # their losses (b,), inf where the continuous label was lost
        histories: List[List[float]] = [[] for _ in range(b)]
        converge = self.method == "constrained"
        for t in range(steps):
            zt = z.detach().requires_grad_(True)
            with torch.enable_grad():
                logits = self.forward(x, zt)
                loss = self.loss(logits, clean_probs, temperatures, zt, anchors)
                (grad,) = torch.autograd.grad(loss.sum(), zt)
            with torch.no_grad():
                loss = loss.detach()
                keeps = (logits.argmax(dim=1) == labels) & active
                if t > 0:  # the start (z = 1 without init_noise) is not a fitted datapath
                    _keep_better(best_cont, zt, loss, keeps)
                if t > 0 and (t % CHECK_EVERY == 0 or t == steps - 1):
                    checked.append(zt.detach().clone())
                    checked_loss.append(torch.where(keeps, loss, torch.full_like(loss, math.inf)))
                values, stopped = loss.tolist(), False  # one device transfer per step, not one per example
                for k in range(b):
                    if running[k]:
                        histories[k].append(values[k])
                        if converge and _converged(histories[k]):
                            running[k], stopped = False, True
                if bar is not None:
                    bar.update(1)
                if not any(running):
                    break
                if stopped:
                    active = torch.tensor(running, device=x.device)
                step = self._step(grad, state1, state2, t + 1, lr)
                z = torch.where(active[:, None], (zt - step).clamp(0.0, self.clamp), zt.detach())
        if bar is not None:
            bar.update(steps - 1 - t)
        with torch.no_grad():
            chosen, gated_labels, binary_labels = self.choose(x, labels, checked, checked_loss, best_cont[0])
            thresholds = torch.full((b,), self.cfg["threshold"], dtype=torch.float64)
            lost = torch.nonzero(binary_labels != labels)[:, 0]
            if self.method == "constrained" and lost.numel() > 0:
                thresholds[lost.cpu()], binary_labels[lost] = self.repair(x[lost], chosen[lost], labels[lost])
        return {"gates": chosen, "gated_labels": gated_labels, "binary_labels": binary_labels, "histories": histories,
                "thresholds": thresholds, "whole": (chosen == 1.0).all(dim=1)}

    def choose(self, x: torch.Tensor, labels: torch.Tensor, checked: List[torch.Tensor], checked_loss: List[torch.Tensor],
               best_cont: torch.Tensor):
        """The best iterate per example (module docstring) and its continuous and binarised labels (B,).

        The checked iterates that kept the continuous label are tried in order of loss, all
        examples in one forward pass per round; an example stops at the first whose binarised
        datapath keeps the label: the lowest-loss iterate keeping both, usually found in the
        first round (one pass, where checking every iterate as it comes costs one per check).
        Otherwise ``best_cont`` (B, n_gates): the lowest-loss iterate keeping the continuous
        label, or the whole network.
        """
        b = x.shape[0]
        chosen = best_cont.clone()
        gated_labels, binary_labels = labels.clone(), labels.clone()
        unresolved = torch.ones(b, dtype=torch.bool, device=x.device)
        if checked:
            gates, losses = torch.stack(checked), torch.stack(checked_loss)  # (S, B, n_gates), (S, B)
            ranked_loss, ranked = torch.sort(losses, dim=0, stable=True)  # equal losses: the earlier step first
            for loss_r, step_r in zip(ranked_loss, ranked):
                rows = torch.nonzero(unresolved & torch.isfinite(loss_r))[:, 0]
                if rows.numel() == 0:
                    break
                candidate = gates[step_r[rows], rows]
                keeps = self.forward(x[rows], self.binarise(candidate)).argmax(dim=1) == labels[rows]
                chosen[rows[keeps]] = candidate[keeps]
                unresolved[rows[keeps]] = False
        rows = torch.nonzero(unresolved)[:, 0]
        if rows.numel() > 0:
            r = rows.numel()
            both = self.forward(torch.cat([x[rows], x[rows]]), torch.cat([chosen[rows], self.binarise(chosen[rows])]))
            gated_labels[rows], binary_labels[rows] = both.argmax(dim=1).split(r)
        return chosen, gated_labels, binary_labels

    def repair(self, x: torch.Tensor, z: torch.Tensor, labels: torch.Tensor):
        """Per-example thresholds (R,) float64 and binarised labels (R,) of the smallest top-k datapaths
        that keep ``labels``, for gates z (R, n_gates) whose datapath at the threshold loses them.

        The datapath of k is ``z >= v_k`` (v the gates sorted descending): the k largest gates and their
        ties. Binary search over k, all R examples in one forward pass per step: ``lo`` loses the label
        (at first the datapath at the threshold), ``hi`` keeps it (at first every gate: the whole
        network); ~log2(n_gates) passes. The threshold is the float32 just below v_hi, so
        ``z > threshold`` is that datapath exactly.
        """
        r, n = z.shape
        values = z.sort(dim=1, descending=True).values  # (R, n)
        lo = (z > self.cfg["threshold"]).sum(dim=1)  # k of the failing datapath (its ties are above the threshold)
        hi = torch.full_like(lo, n)
        rows = torch.arange(r, device=z.device)
        while bool((hi - lo > 1).any()):
            mid = torch.where(hi - lo > 1, (lo + hi) // 2, hi)
            kept = self.forward(x, (z >= values[rows, mid - 1][:, None]).to(z.dtype)).argmax(dim=1) == labels
            hi = torch.where(kept, mid, hi)
            lo = torch.where(kept, lo, torch.maximum(lo, mid))
        cut = values[rows, hi - 1]
        binary_labels = self.forward(x, (z >= cut[:, None]).to(z.dtype)).argmax(dim=1)
        below = torch.nextafter(cut.float().cpu(), torch.tensor(-math.inf))
        return below.double(), binary_labels

    def _step(self, grad: torch.Tensor, state1: torch.Tensor, state2: torch.Tensor, t: int, lr: float) -> torch.Tensor:
        """The update to subtract: Adam (constrained) or SGD with momentum (DGR); states in place."""
        if self.method == "dgr":
            if t == 1:
                state1.copy_(grad)
            else:
                state1.mul_(DGR_MOMENTUM).add_(grad)
            return lr * state1
        beta1, beta2 = ADAM_BETAS
        state1.mul_(beta1).add_(grad, alpha=1 - beta1)
        state2.mul_(beta2).addcmul_(grad, grad, value=1 - beta2)
        m_hat = state1 / (1 - beta1**t)
        v_hat = state2 / (1 - beta2**t)
        return lr * m_hat / (v_hat.sqrt() + ADAM_EPS)


def _replace_rows(result: Dict[str, Any], rows: List[int], again: Dict[str, Any]) -> None:
    """Put the refit ``again`` of a stage's rows (indices into the stage) into that stage's ``result``."""
    for k, row in enumerate(rows):
        for key, value in again.items():
            result[key][row] = value[k]


def _fidelity_temperatures(logits: torch.Tensor) -> torch.Tensor:
    """(B,) temperature T >= 1 per example: 1 where the softmax confidence of logits (B, K) is at most
    ``FIDELITY_MAX_CONFIDENCE``, else the T at which ``max softmax(logits / T)`` equals it (bisection;
    that confidence falls monotonically as T grows)."""
    logits = logits.double()

    def confidence(t: torch.Tensor) -> torch.Tensor:
        return torch.softmax(logits / t[:, None], dim=1).amax(dim=1)

    ones = torch.ones(logits.shape[0], dtype=torch.float64, device=logits.device)
    saturated = confidence(ones) > FIDELITY_MAX_CONFIDENCE
    if not bool(saturated.any()):
        return ones.float()
    low, high = ones.clone(), ones.clone()
    while bool((confidence(high) > FIDELITY_MAX_CONFIDENCE).any()):
        high = torch.where(confidence(high) > FIDELITY_MAX_CONFIDENCE, high * 2, high)
    for _ in range(40):
        mid = (low + high) / 2
        above = confidence(mid) > FIDELITY_MAX_CONFIDENCE
        low, high = torch.where(above, mid, low), torch.where(above, high, mid)
    return torch.where(saturated, high, ones).float()


def _keep_better(best: Any, z: torch.Tensor, loss: torch.Tensor, allowed: torch.Tensor) -> None:
    """Where ``allowed`` and the loss is lower, store z (B, n) and loss (B,) into ``best``."""
    better = allowed & (loss < best[1])
    best[0][better] = z.detach()[better]
    best[1][better] = loss[better]


def _converged(history: List[float]) -> bool:
    """Every loss of the last ``CONVERGENCE_WINDOW`` steps within ``CONVERGENCE_TOL`` (relative) of the
    latest: the range of the window, not two end points, which a loss rising and falling back can match."""
    if len(history) <= CONVERGENCE_WINDOW:
        return False
    window = history[-1 - CONVERGENCE_WINDOW :]
    return max(window) - min(window) <= CONVERGENCE_TOL * max(abs(history[-1]), 1e-12)


def _method_description(method: str) -> Dict[str, Any]:
    if method == "dgr":
        return {
            "objective": "-sum_c p_c(x) log p_c(x;z) + lambda * sum|z|",
            "optimizer": f"SGD momentum {DGR_MOMENTUM}",
            "clamp_rule": f"[0, {DGR_CLAMP_RESIDUAL:g}] if a gated layer is a merging block, else [0, {DGR_CLAMP_PLAIN:g}]",
            "stopping": "fixed number of steps",
            "check_every": CHECK_EVERY,
        }
    return {
        "objective": "||p(x)-p(x;z)||^2 + lambda_x*||z||_1 + gamma_x*sum_j ||z-z_j||_2",
        "scaling": "lambda_x = lambda*||p(x)||^2/n, gamma_x = gamma*||p(x)||^2/sqrt(n), n = number of gates",
        "optimizer": f"Adam betas {list(ADAM_BETAS)}",
        "stopping": f"loss range <= {CONVERGENCE_TOL:g} x loss over the last {CONVERGENCE_WINDOW} steps, or the step limit",
        "check_every": CHECK_EVERY,
        "label_repair": "where the binarised label is lost: the smallest top-k gates keeping it (per-example threshold)",
    }


def _resolve_params(method: str, steps, lr, lambda_, gamma, threshold) -> Dict[str, Any]:
    cfg = dict(DEFAULTS[method])
    given = {"steps": steps, "lr": lr, "lambda_": lambda_, "gamma": gamma, "threshold": threshold}
    for key, value in given.items():
        if value is None:
            continue
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
            raise TypeError(f"{key} must be a finite number, got {value!r}")
        cfg[key] = value
    if int(cfg["steps"]) != cfg["steps"] or cfg["steps"] < 1:
        raise ValueError(f"steps must be a positive integer, got {cfg['steps']!r}")
    cfg["steps"] = int(cfg["steps"])
    if cfg["lr"] <= 0:
        raise ValueError(f"lr must be positive, got {cfg['lr']}")
    if cfg["lambda_"] < 0 or cfg["gamma"] < 0:
        raise ValueError(f"lambda_ and gamma must be >= 0, got {cfg['lambda_']} and {cfg['gamma']}")
    if not 0 <= cfg["threshold"] < 1:
        raise ValueError(f"threshold must be in [0, 1) (gates start at 1), got {cfg['threshold']}")
    if method == "dgr" and cfg["gamma"] != 0:
        raise ValueError("the DGR baseline has no constraint term; leave gamma unset or use method='constrained'")
    cfg["lr"], cfg["lambda_"], cfg["gamma"], cfg["threshold"] = (float(cfg[k]) for k in ("lr", "lambda_", "gamma", "threshold"))
    return cfg


def _init_generator(init_noise: Any, seed: Any) -> Optional[torch.Generator]:
    """Check ``init_noise`` and ``seed``; the CPU generator for the perturbed starts (None without noise)."""
    if isinstance(init_noise, bool) or not isinstance(init_noise, (int, float)) or not 0 <= init_noise < 1:
        raise ValueError(f"init_noise must be a number in [0, 1) (gates start at 1 - init_noise * U(0, 1)), got {init_noise!r}")
    if seed is not None and (isinstance(seed, bool) or not isinstance(seed, (int, np.integer))):
        raise TypeError(f"seed must be an integer or None, got {seed!r}")
    if init_noise == 0:
        return None
    generator = torch.Generator()
    if seed is None:
        generator.seed()
    else:
        generator.manual_seed(int(seed))
    return generator


def _as_images(images: Any) -> torch.Tensor:
    if isinstance(images, np.ndarray):
        images = torch.from_numpy(np.ascontiguousarray(images))
    if not isinstance(images, torch.Tensor):
        raise TypeError(f"images must be a torch.Tensor or numpy array of shape (N, C, H, W), got {type(images).__name__}")
    if images.dim() == 3:
        raise ValueError(f"images have shape {tuple(images.shape)}; add the batch dimension: images.unsqueeze(0) -> (1, C, H, W)")
    if images.dim() != 4 or images.shape[0] == 0:
        raise ValueError(f"images must have shape (N, C, H, W) with N >= 1, got {tuple(images.shape)}")
    if not images.is_floating_point():
        raise TypeError(f"images must be floating point in [0, 1], got dtype {images.dtype}; convert with images.float() / 255")
    images = images.detach().float()
    if not torch.isfinite(images).all():
        bad = sorted({int(i) for i in torch.nonzero(~torch.isfinite(images))[:, 0]})
        raise ValueError(f"images {bad[:10]} contain NaN or infinite values; pass finite pixel values in [0, 1]")
    low, high = float(images.min()), float(images.max())
    if low < -1e-6 or high > 1 + 1e-6:
        raise ValueError(
            f"images range from {low:.3g} to {high:.3g}, not [0, 1]; pass pixel values in [0, 1] and put the "
            "normalisation inside the model (tensorboard_plugin_aevis.models.ClassifierWrapper)"
        )
    return images.clamp(0.0, 1.0)


def _check_roles(roles: Sequence[str], n: int) -> List[str]:
    if isinstance(roles, str):
        raise TypeError(f"roles must be a sequence of {n} role names, not the single string {roles!r}")
    roles = list(roles)
    if len(roles) != n:
        raise ValueError(f"got {len(roles)} roles for {n} images; give one role per image from {ROLES}")
    for i, role in enumerate(roles):
        if role not in ROLES:
            raise ValueError(f"role {role!r} of image {i} is unknown; use one of {ROLES}")
    return roles


def _check_names(names: Optional[Sequence[str]], roles: List[str]) -> List[str]:
    if names is None:
        counts = {r: roles.count(r) for r in roles}
        seen: Dict[str, int] = {}
        out = []
        for role in roles:
            seen[role] = seen.get(role, 0) + 1
            out.append(role if counts[role] == 1 else f"{role} {seen[role]}")
        return out
    names = [str(s) for s in names]
    if len(names) != len(roles):
        raise ValueError(f"got {len(names)} names for {len(roles)} images; give one name per image")
    return names


def _stages(order: Optional[Sequence[Union[str, int]]], roles: List[str]) -> List[List[int]]:
    """The chain as lists of example indices; each list is one batched stage."""
    n = len(roles)
    if order is None:
        order = [r for r in DEFAULT_ORDER if r in roles]
    if isinstance(order, str):
        raise TypeError("order must be a sequence of roles and/or example indices, e.g. ['adversarial', 'source', 'target']")
    stages: List[List[int]] = []
    for item in order:
        if isinstance(item, str):
            if item not in ROLES:
                raise ValueError(f"order names the role {item!r}; use roles from {ROLES} or example indices")
            stage = [i for i, r in enumerate(roles) if r == item]
            if not stage:
                raise ValueError(f"order names the role {item!r} but no image has it")
        elif isinstance(item, (int, np.integer)) and not isinstance(item, bool):
            if not 0 <= int(item) < n:
                raise ValueError(f"order names example {item}, but there are only {n} images (indices 0..{n - 1})")
            stage = [int(item)]
        else:
            raise TypeError(f"order items must be role names or example indices, got {item!r}")
        stages.append(stage)
    flat = [i for s in stages for i in s]
    if sorted(flat) != list(range(n)):
        missing = sorted(set(range(n)) - set(flat))
        repeated = sorted({i for i in flat if flat.count(i) > 1})
        raise ValueError(f"order must place every example exactly once (missing {missing}, repeated {repeated})")
    return stages


@contextlib.contextmanager
def _prepared(model: nn.Module, device: Optional[str]) -> Iterator[torch.device]:
    """Eval mode (and the device) for the extraction; the model's modes and device restored after."""
    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be a torch.nn.Module, got {type(model).__name__}")
    modes = [(m, m.training) for m in model.modules()]
    tensors = list(model.parameters()) + list(model.buffers())
    devices = {t.device for t in tensors}
    here = next(iter(devices)) if len(devices) == 1 else torch.device("cpu")
    target = here if device is None else torch.device(device)
    if device is not None and len(devices) > 1:
        raise ValueError(f"the model is spread over devices {sorted(map(str, devices))}; leave device unset to use it as it is")
    moved = target != here and bool(tensors)
    try:
        if moved:
            try:
                model.to(target)
            except (RuntimeError, AssertionError) as e:
                raise ValueError(f"cannot move the model to device {device!r} ({e}); use device='cpu' or an available device") from e
        model.eval()
        yield target
    finally:
        if moved:
            model.to(here)
        for module, training in modes:
            module.training = training


def _check_fits(model: nn.Module, x: torch.Tensor) -> None:
    """Clear errors for images of the wrong channel count or size."""
    channels = getattr(model, "in_channels", None)
    if channels is None:
        first_conv = next((m for m in model.modules() if isinstance(m, nn.Conv2d)), None)
        channels = first_conv.in_channels if first_conv is not None else None
    if isinstance(channels, int) and x.shape[1] != channels:
        raise ValueError(f"images have {x.shape[1]} channels but the model takes {channels}; convert the images (e.g. grey-scale vs RGB)")
    size = getattr(model, "input_size", None)
    if size is not None and tuple(x.shape[2:]) != tuple(size):
        raise ValueError(f"images are {x.shape[2]}x{x.shape[3]} pixels but the model expects {size[0]}x{size[1]}; resize them first")


def _select(model: nn.Module, x1: torch.Tensor, layers: LayerSpec):
    try:
        return select_layers_and_blocks(model, x1, layers)
    except RuntimeError as e:
        first = str(e).splitlines()[0] if str(e) else type(e).__name__
        raise ValueError(
            f"the model cannot process images of shape {tuple(x1.shape[1:])} ({first}); "
            "check the image size and channel count the model expects"
        ) from e


def _check_logits(logits: Any, n: int) -> None:
    if not isinstance(logits, torch.Tensor) or logits.dim() != 2 or logits.shape[0] != n or logits.shape[1] < 2:
        shape = tuple(logits.shape) if isinstance(logits, torch.Tensor) else type(logits).__name__
        raise ValueError(
            f"the model returned {shape}, not logits of shape ({n}, num_classes >= 2); "
            "wrap it so that forward returns the class logits tensor"
        )
    if not torch.isfinite(logits).all():
        raise ValueError("the model returned NaN or infinite logits for these images; check the model's weights and input")


def _class_name(class_names: Optional[Sequence[str]], label: int) -> str:
    if class_names is not None and 0 <= label < len(class_names):
        return str(class_names[label])
    return str(label)


def _progress_bar(enabled: bool, total: int):
    if not enabled:
        return None
    from tqdm import tqdm

    return tqdm(total=total, desc="datapaths", unit="step")
