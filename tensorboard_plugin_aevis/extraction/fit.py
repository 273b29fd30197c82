"""The fit loop shared by both methods: gates of one chain stage, B independent gate sets.

The best-iterate rule, the label repair and the stopping criterion (the loss settled AND the
binary datapath unchanged over a window) are explained in
docs/method.md ("Best iterate", "Label repair", "Convergence").
"""

from __future__ import annotations

import math
from typing import Any, Dict, List, Optional

import torch
from torch import nn

from ..gating import GateHooks
from .options import ExtractionOptions

CONVERGENCE_TOL = 1e-3
CONVERGENCE_WINDOW = 10
CHECK_EVERY = 5


class GateFit:
    """Fits gates with one method's loss and step over the gated layers of ``hooks``.

    Args:
        model: the classifier, eval mode, weights frozen.
        hooks: :class:`.gating.GateHooks` on the gated layers.
        sizes: channels C_l of each gated layer (n = sum of them gates per example).
        method: a :class:`.methods.Constrained` or :class:`.methods.DGR`.
        options: resolved options (every field of :data:`.options.METHOD_DEFAULTS` set).
        clamp: upper bound of the gates.
        generator: CPU generator for perturbed starts (None: no perturbed start is drawn).
    """

    def __init__(self, model: nn.Module, hooks: GateHooks, sizes: List[int], method: Any, options: ExtractionOptions,
                 clamp: float, generator: Optional[torch.Generator]):
        self.model = model
        self.hooks = hooks
        self.sizes = sizes
        self.n_gates = sum(sizes)
        self.method = method
        self.options = options
        self.clamp = clamp
        self.generator = generator

    def forward(self, x: torch.Tensor, gates: torch.Tensor) -> torch.Tensor:
        """Logits (B, K) of the network on x (B, C, H, W) with gates (B, n) applied."""
        self.hooks.gates = torch.split(gates, self.sizes, dim=1)
        try:
            return self.model(x).float()
        finally:
            self.hooks.gates = None

    def start(self, noise: torch.Tensor, device: torch.device) -> torch.Tensor:
        """Initial gates (B, n): ``1 - noise[b] * U(0, 1)`` per row, U drawn on the CPU from the seeded
        generator (the same draw on every device); rows with noise 0 are exactly 1."""
        b = noise.shape[0]
        if not bool((noise > 0).any()):
            return torch.ones(b, self.n_gates, device=device)
        u = torch.rand(b, self.n_gates, generator=self.generator)
        return (1.0 - noise[:, None].float() * u).to(device)

    def binarise(self, z: torch.Tensor) -> torch.Tensor:
        return (z > self.options.threshold).to(z.dtype)

    def run(self, x: torch.Tensor, clean_probs: torch.Tensor, temperatures: torch.Tensor, labels: torch.Tensor,
            anchors: torch.Tensor, noise: torch.Tensor, bar: Any) -> Dict[str, Any]:
        """Fit the gates of one stage.

        Args:
            x: (B, C, H, W) images.
            clean_probs: (B, K) ungated predictions at ``temperatures`` (B,).
            labels: (B,) ungated labels.
            anchors: (A, n) the earlier datapaths (the chain constraint).
            noise: (B,) start noise per row (see :meth:`start`).
            bar: a tqdm bar or None.
        Returns:
            dict of per-row values: ``gates`` (B, n), ``loss`` (B,) the loss of the returned gates
            (inf for the whole-network fallback), ``gated_labels`` and ``binary_labels`` (B,),
            ``thresholds`` (B,) float64, ``histories`` (B lists of losses, one per step run) and
            ``whole`` (B,) bool: the whole network (z = 1) was returned; ``every_map`` (B,) bool: the
            binary datapath (gates above ``thresholds``) holds every map, ``whole`` or a label repair
            that kept every gate; ``ended_lost`` (B,) bool: the gated prediction of the row's last step
            lost its label.
        """
        b = x.shape[0]
        steps, lr = self.options.steps, self.options.lr
        z = self.start(noise, x.device)
        state = self.method.init_state(z)
        running = [True] * b  # per example: still fitting (the host's copy of ``active``)
        active = torch.ones(b, dtype=torch.bool, device=x.device)
        best_cont = (torch.ones(b, self.n_gates, device=x.device), torch.full((b,), math.inf, device=x.device))
        checked: List[torch.Tensor] = []  # the gates (b, n) at the check steps
        checked_loss: List[torch.Tensor] = []  # their losses (b,), inf where the continuous label was lost
        histories: List[List[float]] = [[] for _ in range(b)]
        datapath = torch.ones(b, self.n_gates, dtype=torch.bool, device=x.device)  # the last step's binary datapath
        settled = torch.zeros(b, dtype=torch.long, device=x.device)  # steps it has been unchanged, per row
        last_keeps = torch.ones(b, dtype=torch.bool, device=x.device)  # the row's last step kept its label
        warmup = self.options.warmup  # the fidelity warm-up (docs/method.md): weight t / warmup, then fresh moments
        t = 0
        for t in range(steps):
            zt = z.detach().requires_grad_(True)
            with torch.enable_grad():
                logits = self.forward(x, zt)
                weight = t / warmup if t < warmup else 1.0
                loss = self.method.loss(logits, clean_probs, temperatures, zt, anchors, self.options, weight)
                (grad,) = torch.autograd.grad(loss.sum(), zt)
            with torch.no_grad():
                loss = loss.detach()
                keeps = (logits.argmax(dim=1) == labels) & active
                last_keeps = torch.where(active, keeps, last_keeps)
                if t > 0:  # the start is not a fitted datapath
                    _keep_better(best_cont, zt, loss, keeps)
                if t > 0 and (t % CHECK_EVERY == 0 or t == steps - 1):
                    checked.append(zt.detach().clone())
                    checked_loss.append(torch.where(keeps, loss, torch.full_like(loss, math.inf)))
                binary = zt > self.options.threshold
                settled = torch.where((binary == datapath).all(dim=1), settled + 1, torch.zeros_like(settled))
                datapath = binary
                values, stopped = loss.tolist(), False  # one device transfer per step, not one per example
                unchanged = None  # ``settled`` on the host, fetched only when a loss window qualifies
                for k in range(b):
                    if running[k]:
                        histories[k].append(values[k])
                        if self.method.converges and converged(histories[k]):
                            unchanged = settled.tolist() if unchanged is None else unchanged
                            if unchanged[k] >= CONVERGENCE_WINDOW:
                                running[k], stopped = False, True
                if bar is not None:
                    bar.update(1)
                if not any(running):
                    break
                if stopped:
                    active = torch.tensor(running, device=x.device)
                if warmup > 0 and t == warmup:
                    state = self.method.init_state(zt)
                step = self.method.step(grad, state, t + 1 - (warmup if t >= warmup else 0), lr)
                moved = zt * torch.exp(-step) if self.options.multiplicative else zt - step
                z = torch.where(active[:, None], moved.clamp(0.0, self.clamp), zt.detach())
        if bar is not None:
            bar.update(steps - 1 - t)
        with torch.no_grad():
            chosen, chosen_loss, gated_labels, binary_labels = self.choose(x, labels, checked, checked_loss, best_cont)
            thresholds = torch.full((b,), self.options.threshold, dtype=torch.float64)
            lost = torch.nonzero(binary_labels != labels)[:, 0]
            if self.method.repairs_labels and lost.numel() > 0:
                thresholds[lost.cpu()], binary_labels[lost] = self.repair(x[lost], chosen[lost], labels[lost])
        return {"gates": chosen, "loss": chosen_loss, "gated_labels": gated_labels, "binary_labels": binary_labels,
                "histories": histories, "thresholds": thresholds, "whole": (chosen == 1.0).all(dim=1),
                "every_map": (chosen > thresholds.to(chosen)[:, None]).all(dim=1), "ended_lost": ~last_keeps}

    def choose(self, x: torch.Tensor, labels: torch.Tensor, checked: List[torch.Tensor], checked_loss: List[torch.Tensor],
               best_cont: Any):
        """The best iterate per example and its loss, continuous and binarised labels.

        The checked iterates that kept the continuous label are tried in order of loss, all examples
        in one forward pass per round; an example stops at the first whose binarised datapath keeps
        the label. Otherwise ``best_cont``: the lowest-loss iterate keeping the continuous label (its
        gates (B, n) and losses (B,), inf where none did), or the whole network.

        Returns:
            gates (B, n), losses (B,), gated labels (B,), binarised labels (B,).
        """
        b = x.shape[0]
        chosen, chosen_loss = best_cont[0].clone(), best_cont[1].clone()
        gated_labels, binary_labels = labels.clone(), labels.clone()
        unresolved = torch.ones(b, dtype=torch.bool, device=x.device)
        if checked:
            gates, losses = torch.stack(checked), torch.stack(checked_loss)  # (S, B, n), (S, B)
            ranked_loss, ranked = torch.sort(losses, dim=0, stable=True)  # equal losses: the earlier step first
            for loss_r, step_r in zip(ranked_loss, ranked):
                rows = torch.nonzero(unresolved & torch.isfinite(loss_r))[:, 0]
                if rows.numel() == 0:
                    break
                candidate = gates[step_r[rows], rows]
                keeps = self.forward(x[rows], self.binarise(candidate)).argmax(dim=1) == labels[rows]
                chosen[rows[keeps]] = candidate[keeps]
                chosen_loss[rows[keeps]] = loss_r[rows[keeps]]
                unresolved[rows[keeps]] = False
        rows = torch.nonzero(unresolved)[:, 0]
        if rows.numel() > 0:
            r = rows.numel()
            both = self.forward(torch.cat([x[rows], x[rows]]), torch.cat([chosen[rows], self.binarise(chosen[rows])]))
            gated_labels[rows], binary_labels[rows] = both.argmax(dim=1).split(r)
        return chosen, chosen_loss, gated_labels, binary_labels

    def repair(self, x: torch.Tensor, z: torch.Tensor, labels: torch.Tensor):
        """Per-example thresholds of the smallest top-k datapaths that keep the labels.

        The datapath of k is ``z >= v_k`` (v the gates sorted descending). Binary search over k, all
        R examples in one forward pass per step, ~log2(n) passes: every gate (the whole network)
        keeps the label, so it always succeeds.

        Args:
            x: (R, C, H, W); z: (R, n) gates whose datapath at the threshold loses ``labels`` (R,).
        Returns:
            thresholds (R,) float64 (the float32 just below v_k, so ``z > threshold`` is that datapath
            exactly) and the binarised labels (R,).
        """
        r, n = z.shape
        values = z.sort(dim=1, descending=True).values  # (R, n)
        lo = (z > self.options.threshold).sum(dim=1)  # k of the failing datapath
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


def converged(history: List[float]) -> bool:
    """True when every loss of the last ``CONVERGENCE_WINDOW`` steps lies within ``CONVERGENCE_TOL``
    (relative) of the latest: the range of the window, not two end points, which a loss rising and
    falling back can match. The fit stops a row only when, in addition, its binary datapath (gates
    above the threshold) was the same at each of those ``CONVERGENCE_WINDOW + 1`` steps."""
    if len(history) <= CONVERGENCE_WINDOW:
        return False
    window = history[-1 - CONVERGENCE_WINDOW :]
    return max(window) - min(window) <= CONVERGENCE_TOL * max(abs(history[-1]), 1e-12)


def _keep_better(best: Any, z: torch.Tensor, loss: torch.Tensor, allowed: torch.Tensor) -> None:
    """Where ``allowed`` and the loss is lower, store z (B, n) and loss (B,) into ``best``."""
    better = allowed & (loss < best[1])
    best[0][better] = z.detach()[better]
    best[1][better] = loss[better]
