"""Contribution analysis (paper Sec. 5.4, Eq. 7 and 8).

Which feature maps of an *earlier* layer make a *target* feature map (or the final
prediction) what it is? One gate ``z_k`` in [0, 1] per earlier feature map and per
analysed example multiplies that map; the gates are fitted to keep the preserved
quantity ``f`` while being as small as possible and similar across the m examples
(the datapaths analysed together)::

    L(z) = sum_i ||f(x_i) - f(x_i; z_i)||^2 / ||f(x_i)||^2
           + lambda * sum_i mean_k z_ik
           + gamma * sum_i sum_{j != i} ||z_i - z_j||_2

- Eq. 7 (``area=None``): ``f`` is the whole target map ``(H_t, W_t)``; the gates
  act on the whole earlier maps.
- Eq. 8 (``area`` given): ``f`` is only the selected neurons of the target map, and
  the gates act only on the *corresponding neurons* of the earlier maps: the
  receptive-field region of the selected neurons on the earlier layer's grid. We
  compute it by autograd, not by layer arithmetic, so any architecture works: the
  bounding box of the earlier-layer positions where the gradient of the selected
  target neurons (summed, all examples, all channels) is non-zero. Outside that
  rectangle the earlier maps pass unchanged.
- :func:`prediction_contributions`: ``f`` is the prediction, with gates on one layer
  only (merging analysis). We preserve the centred logits ``l - mean(l)`` (the
  log-probabilities up to their normaliser) rather than the softmax of Eq. 5: the
  softmax of a confident prediction saturates, its Jacobian at ``z = 1`` nearly
  vanishes, and the quadratic mode would then see no contribution at all.

Scaling (as in the extraction, ``docs/method.md``): the fidelity is relative (divided by ``||f(x_i)||^2``)
and the L1 term is a mean over the ``C`` gates, so ``lambda`` means the same for a
layer of 64 or 2048 maps: a map carrying an average share ``1/C`` of the preserved
signal settles near ``z = 1 - lambda / 2``, a map with a much smaller share goes to 0.
The gamma term uses a smoothed norm ``sqrt(||d||^2 + 1e-8)`` (differentiable at 0).

Modes:

- ``"sgd"`` (default, as the paper): gates start at 1 and are fitted through the real
  network with Adam (a first-order stochastic-gradient method, scale free, where plain
  SGD needs a per-layer learning rate), clamped to [0, 1] after every step, until the
  loss plateaus (at most ``steps``, default 100: with lr 0.1 a gate needs 10 steps just
  to travel from 1 to 0, and the former fixed 20 steps left the resnet50 benchmark's
  loss 2.6x above its plateau with 165 gates still in transit).
- ``"quadratic"``: linearise ``f(z) ~ f(1) - J (1 - z)`` with ``J = df/dz`` from one
  batched backward pass (``autograd.grad(is_grads_batched=True)``, one row per
  preserved neuron) to the earlier feature maps, which also gives the Eq. 8 region;
  when more than ``max_jacobian_rows`` neurons are preserved, ``J`` is replaced by a
  Gaussian sketch ``S J`` (``S``: ``(max_jacobian_rows, P)``, ``E[S^T S] = I``, seeded),
  so the fidelity is kept in expectation. The box-constrained convex problem in ``z``
  is then solved exactly (accelerated projected gradient finished by an active-set
  method), or by ADMM when the gamma term couples several examples (see
  :func:`_fit_quadratic`). Then ``relinearise`` (default 1) Gauss-Newton steps:
  linearise again at the solution and solve again from it. Why: the solution gates
  most maps to 0, far from z = 1, where a ReLU network's response is no longer the
  tangent's; on the resnet50 benchmark the one step lowers the objective measured
  through the network from 0.0375 to 0.0321 (SGD: 0.0136) and raises the rank
  correlation with SGD from 0.50 to 0.59; on EfficientNet-Lite0 (trained weights,
  blocks 8 -> 9) it reaches SGD's answer exactly. It costs a second Jacobian.

Cost: one real forward pass up to the target layer (:class:`ContributionSession`
prepares it once; see :class:`_GatedForward` for the replay), then only the part
between the two layers is re-run: per SGD step one forward and one backward pass of
that part; for the quadratic mode one forward and one backward pass with P rows
(P = preserved neurons, at most ``max_jacobian_rows``) per linearisation. With an
area (Eq. 8) that part runs only on the crop of the earlier maps the area depends on,
when the layers between are spatially local (:func:`_local_crop`; 5.4x fewer
neurons for a 4x4 area behind a 3x3 convolution on a 14x14 map). The quadratic's
numpy solver runs on the calling thread only, never in BLAS threads that would fight
torch's for the cores (:func:`_matvec`).

The score of a map is its gate averaged over the examples (the paper's "contribution",
in [0, 1]); ``ranking`` sorts the maps by score, highest first. Many maps tie (at exactly
1 or 0: the box bounds), so ties are ordered by the fit's gradient at its gates,
averaged over the examples: at z = 1 a more negative gradient (how much the loss would
grow per unit the gate is lowered: the bound's KKT multiplier) means a more needed map;
at z = 0 a smaller one, a map closer to being kept. The gradient is the last SGD step's
or the (last) quadratic's. Then lower channel index first. The model is put in eval mode and its parameters' ``requires_grad``
switched off for the duration of a call, then restored; hooks are removed on exit.
"""

from __future__ import annotations

import contextlib
import dataclasses
import time
from typing import Any, Dict, Iterator, List, Optional, Sequence, Tuple, Union

import numpy as np
import torch
from torch import nn

from .models import exact_float32

MODES = ("sgd", "quadratic")
DEFAULT_LAMBDA = 0.5
DEFAULT_GAMMA = 0.05
DEFAULT_STEPS = 100
PLATEAU_WINDOW = 10
PLATEAU_RTOL = 1e-3
DEFAULT_LR = 0.1
DEFAULT_MAX_JACOBIAN_ROWS = 64
DEFAULT_RELINEARISE = 1
_NORM_EPS = 1e-8

Area = Union[Tuple[int, int, int, int], Sequence[int], np.ndarray, torch.Tensor]


@dataclasses.dataclass
class ContributionResult:
    """Contributions of the C feature maps of ``earlier_layer`` for m examples.

    ``gates``: (m, C) fitted gates in [0, 1]; ``scores``: (C,) their mean over the
    examples; ``ranking``: channel indices sorted by score, highest first;
    ``fidelity``: (m,) relative squared error ``||f - f(z)||^2 / ||f||^2`` of the
    preserved quantity with the fitted gates, measured through the real network;
    ``region``: the gated rectangle ``(y0, x0, y1, x1)`` (half-open) on the earlier
    layer's grid for Eq. 8, ``None`` when the whole maps are gated.
    ``target_layer`` is ``None`` for contributions to the prediction. ``crop``: the
    rectangle of the earlier maps the computation ran on (:func:`_local_crop`), ``None``
    when it ran on the whole maps; the result is the same either way.
    """

    earlier_layer: str
    target_layer: Optional[str]
    channel: Optional[int]
    area: Optional[Tuple[int, int, int, int]]
    area_neurons: int
    mode: str
    gates: np.ndarray
    scores: np.ndarray
    ranking: List[int]
    fidelity: np.ndarray
    region: Optional[Tuple[int, int, int, int]]
    earlier_shape: Tuple[int, int, int]
    params: Dict[str, Any]
    seconds: float
    crop: Optional[Tuple[int, int, int, int]] = None

    def to_json(self, top: Optional[int] = None) -> Dict[str, Any]:
        """Plain JSON values; ``top`` limits the ranked list (all maps when None)."""
        ranked = self.ranking if top is None else self.ranking[:top]
        return {
            "earlier_layer": self.earlier_layer,
            "target_layer": self.target_layer,
            "channel": self.channel,
            "area": list(self.area) if self.area is not None else None,
            "area_neurons": self.area_neurons,
            "mode": self.mode,
            "region": list(self.region) if self.region is not None else None,
            "earlier_shape": list(self.earlier_shape),
            "params": self.params,
            "seconds": self.seconds,
            "fidelity": [float(v) for v in self.fidelity],
            "scores": [float(v) for v in self.scores],
            "gates": [[float(v) for v in row] for row in self.gates],
            "ranking": [{"channel": int(c), "score": float(self.scores[c])} for c in ranked],
        }


class ContributionTimeout(TimeoutError):
    """The computation passed its ``deadline`` (a ``time.monotonic()`` value)."""


def _check_deadline(deadline: Optional[float]) -> None:
    if deadline is not None and time.monotonic() > deadline:
        raise ContributionTimeout("the contribution analysis ran past its time limit; use mode='quadratic', fewer steps or fewer examples")


class _StopForward(Exception):
    """Raised by the target hook: nothing after the target layer is needed."""


# ----------------------------------------------------------------- model plumbing
def _module(model: nn.Module, path: str, what: str) -> nn.Module:
    if not isinstance(path, str) or not path:
        raise TypeError(f"{what} must be a module path string such as 'layer3.1', got {path!r}")
    modules = dict(model.named_modules())
    if path not in modules:
        candidates = [n for n in modules if n and (path in n or n.endswith(path.split(".")[-1]))][:8]
        hint = f"; similar paths: {', '.join(candidates)}" if candidates else "; list them with [n for n, _ in model.named_modules()]"
        raise ValueError(f"unknown {what} {path!r}: the model has no module with that path{hint}")
    return modules[path]


@contextlib.contextmanager
def _analysis_mode(model: nn.Module) -> Iterator[None]:
    """Eval mode, frozen parameters and float32 arithmetic (:func:`.models.exact_float32`) for the
    duration; all restored afterwards."""
    training = {m: m.training for m in model.modules()}
    grad_flags = [(p, p.requires_grad) for p in model.parameters()]
    model.eval()
    for p, _ in grad_flags:
        p.requires_grad_(False)
    try:
        with exact_float32():
            yield
    finally:
        for p, flag in grad_flags:
            p.requires_grad_(flag)
        for m, flag in training.items():
            m.training = flag


_CONTAINERS = (nn.ModuleList, nn.ModuleDict)


def _unit_length(root: nn.Module, parts: Sequence[str]) -> int:
    """How many leading path parts name the child of ``root`` that ``root``'s forward calls.

    Usually 1; more when the child sits in a ModuleList / ModuleDict (never called
    itself): ``_blocks.8`` is the unit of ``_blocks.8.conv`` under an EfficientNet.
    """
    module = root
    for i, part in enumerate(parts):
        module = getattr(module, part)
        if not isinstance(module, _CONTAINERS):
            return i + 1
    return len(parts)


class _ChildrenAsLeaves(torch.fx.Tracer):
    """Traces one module's forward with its called children (see :func:`_unit_length`) kept as opaque calls."""

    def __init__(self, root: nn.Module):
        super().__init__()
        self._root = root

    def is_leaf_module(self, module: nn.Module, qualified_name: str) -> bool:
        parts = qualified_name.split(".")
        return _unit_length(self._root, parts) == len(parts)


def _lca_graph(lca: nn.Module) -> Optional[torch.fx.GraphModule]:
    """The LCA's forward as an fx graph whose calls of children stay calls: traced with torch.fx,
    or, when tracing fails, the module's own graph when it has one (the modules of a loaded model
    artifact, ``torch.export.unflatten``'s InterpreterModule, run an fx graph); else None."""
    try:
        return torch.fx.GraphModule(lca, _ChildrenAsLeaves(lca).trace(lca))
    except Exception:  # any tracing failure (data-dependent control flow, ...)
        pass
    graph = getattr(lca, "graph", None)
    if isinstance(graph, torch.fx.Graph):
        try:
            return torch.fx.GraphModule(lca, graph)
        except Exception:
            return None
    return None


def _clone(value: Any) -> Any:
    return value.clone() if isinstance(value, torch.Tensor) else value


class _GatedForward:
    """Runs the model from the earlier layer to the target layer with gates applied.

    Only the part of the forward pass between the two layers is re-run per call:
    :meth:`prepare` runs the model once up to the lowest common ancestor module of
    the two layers (LCA), traces the LCA with torch.fx (its direct children kept as
    calls; a module of a loaded model artifact, which cannot be traced, gives its own fx
    graph: :func:`_lca_graph`), runs the LCA's graph up to the child holding the earlier
    layer once and caches the values later nodes read; :meth:`run` replays the rest.
    When the LCA has no such graph, or its graph does not reproduce the LCA's output,
    the replay calls the LCA with its cached inputs. Cached values
    are cloned per replay (in-place ops such as ``ReLU(inplace=True)`` stay safe).

    ``run(gates, region)`` -> the target output (the model output when the target is
    None); ``gates``: (m, C) or None for the ungated network; ``region``: (H_e, W_e)
    float mask of the gated neurons or None for whole maps. The last gated earlier
    output is kept in ``self.gated`` (and before the gates in ``self.ungated``).

    Two rectangles ``(y0, x0, y1, x1)`` on the earlier grid change what the earlier layer
    passes on (see :func:`_local_crop`): ``crop`` passes only that crop (the rest of the
    pass then runs on the smaller maps; ``region`` and ``self.gated`` have the crop's
    shape), ``poison`` sets every earlier neuron outside it to NaN.
    """

    def __init__(self, model: nn.Module, earlier_path: str, target_path: Optional[str]):
        self.model = model
        self.earlier = _module(model, earlier_path, "earlier layer")
        self.target = _module(model, target_path, "target layer") if target_path is not None else None
        earlier_parts = earlier_path.split(".")
        target_parts = target_path.split(".") if target_path is not None else []
        common: List[str] = []
        for a, b in zip(earlier_parts, target_parts):
            if a != b:
                break
            common.append(a)
        self._lca_path = ".".join(common)
        self._earlier_rel = earlier_parts[len(common):]
        self._target_rel = target_parts[len(common):]
        self.gates: Optional[torch.Tensor] = None
        self.region: Optional[torch.Tensor] = None
        self.gated: Optional[torch.Tensor] = None
        self.ungated: Optional[torch.Tensor] = None
        self.captured: Optional[torch.Tensor] = None
        self.crop: Optional[Tuple[int, int, int, int]] = None
        self.poison: Optional[Tuple[int, int, int, int]] = None
        self._replay = None

    # --------------------------------------------------------------- gating
    def _gate(self, output: Any) -> torch.Tensor:
        if not isinstance(output, torch.Tensor) or output.dim() != 4:
            shape = tuple(output.shape) if isinstance(output, torch.Tensor) else type(output).__name__
            raise ValueError(f"the earlier layer must output a 4-D feature map (B, C, H, W), its output is {shape}; pick a convolutional block")
        if self.poison is not None:
            y0, x0, y1, x1 = self.poison
            poisoned = torch.full_like(output, float("nan"))
            poisoned[:, :, y0:y1, x0:x1] = output[:, :, y0:y1, x0:x1]
            output = poisoned
        if self.crop is not None:
            y0, x0, y1, x1 = self.crop
            output = output[:, :, y0:y1, x0:x1]
        self.ungated = output
        if self.gates is None:
            self.gated = output
            return output
        z = self.gates[:, :, None, None]
        if self.region is not None:
            z = 1.0 + self.region[None, None] * (z - 1.0)
        self.gated = output * z
        return self.gated

    def _gate_hook(self, module: nn.Module, inputs: Any, output: Any) -> Any:
        return self._gate(output)

    def _target_hook(self, module: nn.Module, inputs: Any, output: Any) -> None:
        self.captured = output
        raise _StopForward

    @contextlib.contextmanager
    def hooks(self) -> Iterator["_GatedForward"]:
        handles = [self.earlier.register_forward_hook(self._gate_hook)]
        if self.target is not None:
            handles.append(self.target.register_forward_hook(self._target_hook))
        try:
            yield self
        finally:
            for h in handles:
                h.remove()

    # --------------------------------------------------------------- replay
    def prepare(self, images: torch.Tensor, earlier_path: str, target_path: Optional[str]) -> torch.Tensor:
        """One real forward pass up to the target (inside :meth:`hooks`, no gates).

        Checks that the earlier layer runs before the target, builds the replay and
        returns the ungated target output (the model output when the target is None).
        """
        # the LCA's ancestors; for the prediction, every module around the earlier layer whose output is the
        # model's (a wrapper's inner network), so the replay can start as deep as possible
        if self.target is None:
            parts = earlier_path.split(".")[:-1]
        else:
            parts = self._lca_path.split(".") if self._lca_path else []
        ancestors = [".".join(parts[:k]) for k in range(len(parts), -1, -1)]  # the deepest, its parent, ..., the root
        calls: Dict[str, Tuple[Any, Any]] = {}
        outputs: Dict[str, Any] = {}
        handles = [
            self.model.get_submodule(path).register_forward_pre_hook(
                lambda module, args, kwargs, path=path: calls.setdefault(path, (args, kwargs)), with_kwargs=True)
            for path in ancestors
        ]
        if self.target is None:
            handles += [self.model.get_submodule(path).register_forward_hook(
                lambda module, args, output, path=path: outputs.setdefault(path, output)) for path in ancestors]
        self.gates, self.captured, self.gated = None, None, None
        try:
            out = self.model(images)
            if self.target is not None:
                raise ValueError(f"target layer {target_path!r} is never called in a forward pass of the model; pick a module that runs")
        except _StopForward:
            out = self.captured
        finally:
            for handle in handles:
                handle.remove()

        def gives_the_target(path: str) -> bool:
            found = outputs.get(path)
            return self.target is not None or path == "" or found is out or (
                isinstance(found, torch.Tensor) and isinstance(out, torch.Tensor) and found.shape == out.shape and torch.equal(found, out))

        # a ModuleList LCA is never called itself
        called = next((path for path in ancestors if path in calls and gives_the_target(path)), None)
        if called is not None and called != self._lca_path:
            depth = len(called.split(".")) if called else 0
            self._earlier_rel = earlier_path.split(".")[depth:]
            self._target_rel = target_path.split(".")[depth:] if target_path is not None else []
            self._lca_path = called
        lca = self.model.get_submodule(self._lca_path)
        captured = {"args": calls.get(self._lca_path, ((), {}))[0], "kwargs": calls.get(self._lca_path, ((), {}))[1]}
        if self.gated is None:
            where = f"target layer {target_path!r}" if target_path is not None else "the model output"
            raise ValueError(
                f"earlier layer {earlier_path!r} does not run before {where} in a forward pass "
                "(it runs after it, or not at all); pick a layer closer to the input"
            )
        whole_lca = lambda: lca(*[_clone(a) for a in captured["args"]], **{k: _clone(v) for k, v in captured["kwargs"].items()})
        traced = self._traced_replay(lca, captured["args"], captured["kwargs"])
        self._replay = traced or whole_lca
        try:
            replayed = self.run(None, None)
        except ValueError:
            if traced is None:
                raise
            replayed = None  # the graph's output is not the module's (e.g. a loaded model's outputs, flattened)
        if not (isinstance(out, torch.Tensor) and isinstance(replayed, torch.Tensor) and replayed.shape == out.shape
                and torch.allclose(replayed, out, rtol=1e-4, atol=1e-5)):
            self._replay = whole_lca  # the traced graph does not reproduce the model: replay the LCA as a whole
        return out

    def _traced_replay(self, lca: nn.Module, args: Tuple[Any, ...], kwargs: Dict[str, Any]):
        """A replay of the LCA's fx graph from the child holding the earlier layer, or None."""
        if kwargs or not self._earlier_rel:
            return None
        graph_module = _lca_graph(lca)
        if graph_module is None:
            return None
        nodes = list(graph_module.graph.nodes)
        called = {n.target for n in nodes if n.op == "call_module"}
        unit = next((k for k in range(len(self._earlier_rel), 0, -1) if ".".join(self._earlier_rel[:k]) in called), None)
        if unit is None:
            return None
        first = [n for n in nodes if n.op == "call_module" and n.target == ".".join(self._earlier_rel[:unit])]
        if len(first) != 1 or sum(n.op == "placeholder" for n in nodes) != len(args):
            return None
        start = nodes.index(first[0])
        earlier_is_child = unit == len(self._earlier_rel)
        interpreter = torch.fx.Interpreter(graph_module)
        interpreter.args_iter = iter(args)
        prefix = nodes[: start + 1] if earlier_is_child else nodes[:start]
        for node in prefix:  # the earlier child itself runs ungated here (gates are None)
            interpreter.env[node] = interpreter.run_node(node)
        later = set(nodes[len(prefix):])
        cached = {n: v for n, v in interpreter.env.items() if any(u in later for u in n.users)}
        earlier_output = interpreter.env[first[0]] if earlier_is_child else None
        returns_target = not self._target_rel

        def replay():
            interpreter.env = {n: _clone(v) for n, v in cached.items()}
            if earlier_is_child:
                interpreter.env[first[0]] = self._gate(_clone(earlier_output))
            for node in nodes[len(prefix):]:
                value = interpreter.run_node(node)
                if node.op == "output":
                    if isinstance(value, (tuple, list)) and len(value) == 1:  # a loaded model's graph returns its outputs flattened
                        value = value[0]
                    if returns_target and self.target is not None:
                        self.captured = value
                        raise _StopForward
                    return value
                interpreter.env[node] = value
            raise AssertionError("an fx graph always ends in an output node")

        return replay

    def run(self, gates: Optional[torch.Tensor], region: Optional[torch.Tensor]) -> torch.Tensor:
        self.gates, self.region, self.captured, self.gated = gates, region, None, None
        try:
            out = self._replay()
        except _StopForward:
            out = self.captured
        if self.gated is None:
            raise ValueError("the earlier layer was never called on the way to the target; pick a module on the path to the target")
        if not isinstance(out, torch.Tensor):
            raise ValueError(f"the target layer outputs {type(out).__name__}, not a tensor; pick a module that outputs a feature map")
        return out


# ------------------------------------------------------------------- validation
def _check_images(images: torch.Tensor) -> torch.Tensor:
    if not isinstance(images, torch.Tensor):
        raise TypeError(f"images must be a torch.Tensor (m, C, H, W), got {type(images).__name__}")
    if images.dim() == 3:
        images = images.unsqueeze(0)
    if images.dim() != 4 or images.shape[0] == 0:
        raise ValueError(f"images must have shape (m, C, H, W) with m >= 1, got {tuple(images.shape)}")
    if not torch.isfinite(images).all():
        raise ValueError("images contain NaN or infinite values")
    return images.float()


def _area_mask(area: Area, height: int, width: int) -> Tuple[torch.Tensor, Optional[Tuple[int, int, int, int]]]:
    """(H_t, W_t) bool mask of the selected neurons and the rectangle (if one was given)."""
    if isinstance(area, (np.ndarray, torch.Tensor)) and area.ndim == 2:
        mask = torch.as_tensor(np.asarray(area)).bool()
        if tuple(mask.shape) != (height, width):
            raise ValueError(f"the area mask has shape {tuple(mask.shape)} but the target map is {height}x{width}; pass a ({height}, {width}) boolean mask")
        if not mask.any():
            raise ValueError("the area mask selects no neuron; select at least one")
        return mask, None
    values = list(np.asarray(area).reshape(-1)) if not isinstance(area, (list, tuple)) else list(area)
    if len(values) != 4 or not all(float(v).is_integer() for v in values):
        raise ValueError(f"area must be a rectangle (y0, x0, y1, x1) of integers or a ({height}, {width}) boolean mask, got {area!r}")
    y0, x0, y1, x1 = (int(v) for v in values)
    if not (0 <= y0 < y1 <= height and 0 <= x0 < x1 <= width):
        raise ValueError(
            f"area (y0={y0}, x0={x0}, y1={y1}, x1={x1}) is outside the {height}x{width} target map or empty; "
            f"it is half-open in neuron units: need 0 <= y0 < y1 <= {height} and 0 <= x0 < x1 <= {width}"
        )
    mask = torch.zeros(height, width, dtype=torch.bool)
    mask[y0:y1, x0:x1] = True
    return mask, (y0, x0, y1, x1)


def _check_params(mode: str, lambda_: float, gamma: float, steps: int, relinearise: int = DEFAULT_RELINEARISE) -> None:
    if mode not in MODES:
        raise ValueError(f"unknown mode {mode!r}; use one of {', '.join(MODES)}")
    if not (np.isfinite(lambda_) and lambda_ >= 0):
        raise ValueError(f"lambda_ must be a finite number >= 0, got {lambda_!r}")
    if not (np.isfinite(gamma) and gamma >= 0):
        raise ValueError(f"gamma must be a finite number >= 0, got {gamma!r}")
    if not isinstance(steps, int) or steps < 1:
        raise ValueError(f"steps must be a positive integer, got {steps!r}")
    if not isinstance(relinearise, int) or relinearise < 0:
        raise ValueError(f"relinearise must be an integer >= 0, got {relinearise!r}")


# ------------------------------------------------------------------- objectives
def _penalties(z: torch.Tensor, lambda_: float, gamma: float) -> torch.Tensor:
    """lambda * sum_i mean_k z_ik + gamma * sum_{i != j} ||z_i - z_j|| for z (m, C)."""
    loss = lambda_ * z.mean(dim=1).sum()
    if gamma > 0 and z.shape[0] > 1:
        diff = z[:, None, :] - z[None, :, :]
        loss = loss + gamma * torch.sqrt((diff**2).sum(-1) + _NORM_EPS).sum() - gamma * z.shape[0] * _NORM_EPS**0.5
    return loss


def _relative_error(preserved: torch.Tensor, reference: torch.Tensor, norms: torch.Tensor) -> torch.Tensor:
    """(m,) ||preserved - reference||^2 / ||reference||^2 over the flattened neurons."""
    return ((preserved - reference) ** 2).flatten(1).sum(1) / norms


def _fit_sgd(forward: _GatedForward, images, select, reference, norms, region, channels, lambda_, gamma, steps, lr, deadline):
    """Adam from z = 1 -> (gates (m, C), steps run, the loss gradient (m, C) of the last step):
    at most ``steps``, fewer once the loss has plateaued (it fell by less than
    ``PLATEAU_RTOL`` of itself over ``PLATEAU_WINDOW`` steps)."""
    z = torch.ones(images.shape[0], channels, device=images.device, requires_grad=True)
    optimizer = torch.optim.Adam([z], lr=lr)
    losses: List[float] = []
    for _ in range(steps):
        _check_deadline(deadline)
        optimizer.zero_grad()
        preserved = select(forward.run(z, region))
        loss = _relative_error(preserved, reference, norms).sum() + _penalties(z, lambda_, gamma)
        loss.backward()
        optimizer.step()
        with torch.no_grad():
            z.clamp_(0.0, 1.0)
        losses.append(float(loss.detach()))
        if len(losses) > PLATEAU_WINDOW and losses[-PLATEAU_WINDOW - 1] - losses[-1] < PLATEAU_RTOL * abs(losses[-1]):
            break
    return z.detach(), len(losses), z.grad.detach().clone()


def _jacobian(forward: _GatedForward, images, select, channels, max_rows, seed, with_area, gates: Optional[torch.Tensor] = None,
              region: Optional[torch.Tensor] = None):
    """(D J, D, region mask, rectangle, D f) at ``gates`` (default z = 1) from ONE batched backward pass.

    The backward gives the gradient of every (sketched) preserved neuron w.r.t. the gated
    earlier feature maps, (R, m, C, H_e, W_e); at z = 1 its support is the receptive field
    (Eq. 8 region, when ``with_area``; else ``region`` is used as given) and
    ``J[r, i, k] = sum_hw grad * activation * region`` (the ungated activation).
    ``D`` (R, P) is the identity when P <= ``max_rows``, else a seeded Gaussian sketch
    with ``E[D^T D] = I``; ``D J`` has shape (m, R, C) and ``D f``, the sketched preserved
    neurons at ``gates``, (m, R).
    """
    z = (torch.ones(images.shape[0], channels, device=images.device) if gates is None else gates.clone()).requires_grad_(True)
    with torch.enable_grad():
        preserved = select(forward.run(z, region)).flatten(1)  # (m, P)
    activation, ungated = forward.gated, forward.ungated.detach()
    m, p = preserved.shape
    if p <= max_rows:
        directions = torch.eye(p, device=images.device)
    else:  # drawn on the CPU: the same sketch on every device
        directions = torch.randn(max_rows, p, generator=torch.Generator().manual_seed(seed)).to(images.device) / max_rows**0.5
    batched = directions.unsqueeze(1).expand(len(directions), m, p).contiguous()
    (spatial,) = torch.autograd.grad(preserved, activation, grad_outputs=batched, is_grads_batched=True)
    rectangle = None
    if with_area:
        region, rectangle = _region_from_gradient(spatial.abs().sum(dim=(0, 1, 2)))
    weighted = ungated if region is None else ungated * region
    rows = (spatial * weighted.unsqueeze(0)).sum(dim=(-1, -2))  # (R, m, C)
    return rows.permute(1, 0, 2).contiguous(), directions, region, rectangle, preserved.detach() @ directions.T


def _quadratic_objective(jac64: np.ndarray, lambda_: float, gamma: float, deadline: Optional[float], target64: Optional[np.ndarray] = None):
    """``objective(flat z) -> (value, gradient)`` of sum_i ||b_i - J_i z_i||^2 + penalties.

    ``jac64``: (m, R, C) float64, already divided by ``sqrt(n_i)``; ``target64``: b (m, R),
    scaled alike, default ``J 1`` (the residual is then ``J (1 - z)``); the penalties are
    those of :func:`_penalties`, in numpy (the solver calls this hundreds of times).
    """
    m, _, c = jac64.shape
    target64 = jac64.sum(axis=2) if target64 is None else target64

    def objective(flat: np.ndarray) -> Tuple[float, np.ndarray]:
        _check_deadline(deadline)
        z = flat.reshape(m, c)
        residual = target64 - np.einsum("irc,ic->ir", jac64, z)
        grad = -2.0 * np.einsum("irc,ir->ic", jac64, residual) + lambda_ / c
        value = float((residual**2).sum()) + lambda_ * float(z.mean(axis=1).sum())
        if gamma > 0 and m > 1:
            diff = z[:, None, :] - z[None, :, :]
            norm = np.sqrt((diff**2).sum(-1) + _NORM_EPS)
            value += gamma * float(norm.sum() - m * _NORM_EPS**0.5)
            grad += 2.0 * gamma * (diff / norm[:, :, None]).sum(axis=1)
        return value, grad.reshape(-1)

    return objective


def _fit_quadratic(jac: torch.Tensor, norms: torch.Tensor, lambda_: float, gamma: float, steps: int, deadline: Optional[float],
                   target: Optional[torch.Tensor] = None, start: Optional[torch.Tensor] = None) -> torch.Tensor:
    """Minimise sum_i ||b_i - J_i z_i||^2 / n_i + penalties over z in [0, 1]^(m x C); ``jac``: (m, R, C).

    ``target``: b (m, R), default ``J 1`` (residual ``J (1 - z)``, the linearisation at
    z = 1); ``start``: the solvers' first iterate (m, C), default all ones. Uncoupled
    examples (m = 1 or gamma = 0): one box-constrained quadratic per example,
    :func:`_solve_box_quadratic`; coupled examples: :func:`_solve_coupled`; both at most
    ``50 * steps`` iterations.
    """
    m, _, c = jac.shape
    jac64, target64 = _scaled64(jac, norms, target)
    target64 = jac64.sum(axis=2) if target64 is None else target64
    start64 = np.ones((m, c)) if start is None else _float64(start)
    if m > 1 and gamma > 0:
        solution = _solve_coupled(jac64, target64, lambda_ / c, gamma, start64, 50 * steps, deadline)
        return torch.tensor(solution, dtype=torch.float32, device=jac.device)
    gates = [_solve_box_quadratic(j, lambda_ / c, 50 * steps, deadline, b, z0) for j, b, z0 in zip(jac64, target64, start64)]
    return torch.tensor(np.stack(gates), dtype=torch.float32, device=jac.device)


def _solve_coupled(jac: np.ndarray, target: np.ndarray, linear: float, gamma: float, start: np.ndarray, max_iter: int,
                   deadline: Optional[float], tol: float = 1e-5) -> np.ndarray:
    """argmin over z in [0, 1]^(m x C) of ``sum_i ||b_i - J_i z_i||^2 + linear * sum(z) + gamma * sum_{i != j} ||z_i - z_j||``
    by ADMM; ``jac``: (m, R, C), ``target``: b (m, R), ``start`` (m, C) -> (m, C).

    The examples are coupled by the (non-smooth) gamma norms, which made L-BFGS-B on their
    smoothed form stall (1600-3000 evaluations on the demo's triplet). Splitting: ``z``
    free, ``x = z`` in the box, ``u_ij = z_i - z_j`` (i < j, weight 2 gamma). The z step
    solves ``(blockdiag(2 J_i^T J_i) + rho (I + L) (x) I_C) z = r`` exactly (L: the
    Laplacian of the complete graph on the m examples) by the Woodbury identity: J_i has
    only R rows, so one (mR x mR) inverse per solve; the x step clips, the u step shrinks
    each pair's difference (group soft-threshold). ``rho`` starts at 0.1 x 2 mean_i
    ||J_i||_2^2 and is doubled or halved every 10 iterations while one residual is 10x
    the other (residual balancing). Stops when the primal residual ``|z - x|`` and the
    change of x times rho are below ``tol``, or after ``max_iter`` iterations. Returns x
    (in the box); ``tol`` is in gate units. Measured on the demo's triplets (busy 2-core
    CPU): 0.15-0.19 s against L-BFGS-B's 0.85-4.0 s, objective within 0.003 % of a
    tightly converged L-BFGS-B run. Its products go through np.einsum, on the calling
    thread only (see :func:`_matvec`).
    """
    m, rows, c = jac.shape
    rho = 0.1 * max(2.0 * float(np.mean([np.linalg.eigvalsh(np.einsum("rc,sc->rs", j, j)).max() for j in jac])), 1e-12)
    pairs = [(i, j) for i in range(m) for j in range(i + 1, m)]
    gram = np.einsum("irc,jsc->irjs", jac, jac).reshape(m * rows, m * rows)  # J_i J_j^T blocks

    def factor(rho: float) -> Tuple[np.ndarray, np.ndarray]:
        k_inv = np.linalg.inv(rho * ((m + 1) * np.eye(m) - np.ones((m, m))))  # (rho (I + L))^-1, mixes examples per map
        return k_inv, np.linalg.inv(np.eye(m * rows) + 2.0 * np.kron(k_inv, np.ones((rows, rows))) * gram)

    k_inv, inner_inv = factor(rho)
    twice_jtb = 2.0 * np.einsum("irc,ir->ic", jac, target)
    z = np.clip(start, 0.0, 1.0)
    x, p = z.copy(), np.zeros_like(z)
    u = np.stack([z[i] - z[j] for i, j in pairs])
    q = np.zeros_like(u)
    for iteration in range(max_iter):
        if iteration % 100 == 0:
            _check_deadline(deadline)
        rhs = twice_jtb - linear + rho * (x - p)
        for k, (i, j) in enumerate(pairs):
            rhs[i] += rho * (u[k] - q[k])
            rhs[j] -= rho * (u[k] - q[k])
        y = np.einsum("ij,jc->ic", k_inv, rhs)
        s = np.einsum("ab,b->a", inner_inv, 2.0 * np.einsum("irc,ic->ir", jac, y).reshape(-1)).reshape(m, rows)
        z = y - np.einsum("ij,jc->ic", k_inv, np.einsum("irc,ir->ic", jac, s))
        x_old, x = x, np.clip(z + p, 0.0, 1.0)
        p += z - x
        differences = np.stack([z[i] - z[j] for i, j in pairs]) + q
        norms = np.sqrt((differences**2).sum(axis=1, keepdims=True))
        u = np.maximum(0.0, 1.0 - (2.0 * gamma / rho) / np.maximum(norms, 1e-300)) * differences
        q = differences - u
        primal, dual = np.abs(z - x).max(), rho * np.abs(x - x_old).max()
        if primal < tol and dual < tol:
            break
        if iteration % 10 == 9 and max(primal, dual) > 10.0 * min(primal, dual):  # residual balancing (Boyd et al. 2011, 3.4.1)
            scale = 2.0 if primal > dual else 0.5
            rho *= scale
            p /= scale
            q /= scale
            k_inv, inner_inv = factor(rho)
    return x


def _float64(tensor: torch.Tensor) -> np.ndarray:
    """A tensor on any device as a float64 numpy array (the quadratic solvers run in numpy)."""
    return tensor.detach().double().cpu().numpy()


def _scaled64(jac: torch.Tensor, norms: torch.Tensor, target: Optional[torch.Tensor]):
    """(J, b) of the quadratic in float64 numpy, divided by sqrt(n_i): (m, R, C) and (m, R), b None
    (the default ``J 1``) staying None."""
    scale = np.sqrt(_float64(norms))
    return _float64(jac) / scale[:, None, None], None if target is None else _float64(target) / scale[:, None]


# The solver's products with J (R x C, e.g. 16 x 1024) go through np.einsum, which never
# calls BLAS, rather than ``@``. numpy's OpenBLAS runs a product that size on all cores
# with its own threads, which then spin for a while; torch's OpenMP threads spin the
# same way between the network passes that surround each solve. On a 2-core machine the
# two pools fight over the cores: the resnet50 benchmark's quadratic query took 0.18 s
# (median) against 0.06 s with OpenBLAS held to one thread, and far longer while another
# process loads the machine. Single-threaded einsum is about 15 % slower than
# single-threaded BLAS here, at a few milliseconds per solve. The remaining numpy linear
# algebra (eigvalsh of R x R, lstsq of at most 4R x 4R) is too small for OpenBLAS to
# thread; tests/test_contribution.py checks that a solve uses the calling thread only.
def _matvec(jac: np.ndarray, z: np.ndarray) -> np.ndarray:
    """``J z`` for ``jac`` (R, C), ``z`` (C,), on the calling thread only."""
    return np.einsum("rc,c->r", jac, z)


def _rmatvec(jac: np.ndarray, v: np.ndarray) -> np.ndarray:
    """``J^T v`` for ``jac`` (R, C), ``v`` (R,), on the calling thread only."""
    return np.einsum("rc,r->c", jac, v)


def _solve_box_quadratic(jac: np.ndarray, linear: float, max_iter: int, deadline: Optional[float], target: Optional[np.ndarray] = None,
                         start: Optional[np.ndarray] = None, warm_up: int = 100) -> np.ndarray:
    """argmin over z in [0, 1]^C of ``||b - J z||^2 + linear * sum(z)``; ``jac``: (R, C) -> (C,).

    ``target``: b (R,), default ``J 1``; ``start``: the first iterate, default all ones
    (when given, the active-set finish is tried from it first).

    Accelerated projected gradient (FISTA, step 1 / Lipschitz constant, adaptive momentum
    restarts, O'Donoghue and Candes 2015) for ``warm_up`` iterations finds roughly which
    gates sit at 0, at 1 or between; :func:`_active_set` then finishes exactly from there.
    With R << C rows the Hessian ``2 J^T J`` is rank-deficient and FISTA alone needs
    thousands of iterations for the last digits. Should the active-set finish not reach
    the optimum, FISTA goes on, up to ``max_iter`` iterations in all.
    """
    target = jac.sum(axis=1) if target is None else target
    lipschitz = max(2.0 * float(np.linalg.eigvalsh(np.einsum("rc,sc->rs", jac, jac)).max()), 1e-12)  # 2 ||J||_2^2
    z = np.ones(jac.shape[1]) if start is None else np.clip(start, 0.0, 1.0)
    if start is not None:  # a warm start (the previous Gauss-Newton solution) is usually close to the active set
        exact = _active_set(jac, target, linear, z, 4 * jac.shape[0] + 16)
        if exact is not None:
            return exact
    y, momentum = z.copy(), 1.0
    for iteration in range(1, max_iter + 1):
        grad = linear - 2.0 * _rmatvec(jac, target - _matvec(jac, y))
        candidate = np.clip(y - grad / lipschitz, 0.0, 1.0)
        if (y - candidate) @ (candidate - z) > 0:  # adaptive restart: the momentum points uphill
            momentum = 1.0
        next_momentum = (1.0 + np.sqrt(1.0 + 4.0 * momentum**2)) / 2.0
        moved = float(np.abs(candidate - z).max())
        y = candidate + (momentum - 1.0) / next_momentum * (candidate - z)
        z, momentum = candidate, next_momentum
        if moved < 1e-9:
            break
        if iteration % warm_up == 0:
            _check_deadline(deadline)
            exact = _active_set(jac, target, linear, z, 4 * jac.shape[0] + 16)
            if exact is not None:
                return exact
    return z


def _active_set(jac: np.ndarray, target: np.ndarray, linear: float, start: np.ndarray, max_iter: int) -> Optional[np.ndarray]:
    """Primal active-set method for the box quadratic of :func:`_solve_box_quadratic` from ``start``.

    Gates at a bound stay fixed; the free ones move to the minimiser on their subspace
    (``lstsq`` of ``J_F^T J_F p = -g_F / 2``; where that system is inconsistent, along its
    residual, a zero-curvature descent direction), stopping at the first bound they
    hit, which then fixes that gate. When the free gates are stationary, a fixed gate
    whose gradient points into the box (the wrong sign of its multiplier) is released.
    Returns the point once the KKT conditions hold (tolerance 1e-6 of ``linear``), or
    None after ``max_iter`` changes or if the free set exceeds 4R gates.
    """
    z = start.copy()
    free = (z > 0.0) & (z < 1.0)
    tol = 1e-6 * max(linear, 1e-12)
    for _ in range(max_iter):
        grad = linear - 2.0 * _rmatvec(jac, target - _matvec(jac, z))
        if free.sum() > 4 * jac.shape[0]:
            return None
        if free.any():
            cols = jac[:, free]
            hessian = 2.0 * cols.T @ cols
            step = np.linalg.lstsq(hessian, -grad[free], rcond=None)[0]
            residual = -grad[free] - hessian @ step
            if np.abs(residual).max() > tol:  # unbounded along the null space: descend along the residual
                step = residual * (1e6 / max(float(np.abs(residual).max()), 1e-300))
            if np.abs(step).max() > 1e-12:
                zf = z[free]
                limits = np.where(step > 0, (1.0 - zf) / np.where(step > 0, step, 1.0), np.where(step < 0, -zf / np.where(step < 0, step, -1.0), np.inf))
                alpha = min(1.0, float(limits.min()))
                z[free] = np.clip(zf + alpha * step, 0.0, 1.0)
                if alpha < 1.0:
                    blocking = np.flatnonzero(free)[int(limits.argmin())]
                    z[blocking] = 1.0 if step[int(limits.argmin())] > 0 else 0.0
                    free[blocking] = False
                    continue
                grad = linear - 2.0 * _rmatvec(jac, target - _matvec(jac, z))
        wrong = np.where(free, 0.0, np.where(z == 0.0, np.maximum(-grad, 0.0), np.maximum(grad, 0.0)))
        worst = int(wrong.argmax())
        if wrong[worst] <= tol and (not free.any() or np.abs(grad[free]).max() <= tol):
            return z
        if wrong[worst] <= tol:  # free gates not yet stationary (numerical): one more solve
            continue
        free[worst] = True
    return None


def _fit_linearised(forward: _GatedForward, images, select, reference, norms, with_area, channels, lambda_, gamma, steps, max_rows, seed,
                    relinearise, deadline):
    """Quadratic mode -> (gates (m, C), region mask, rectangle, the last quadratic's gradient at the gates (m, C)).

    Linearise at z = 1 and solve; then ``relinearise`` times
    (Gauss-Newton): linearise again at the solution z_t, ``f(z) ~ f(z_t) + J_t (z - z_t)``,
    and solve ``||D (f_0 - f(z_t)) + J_t z_t - J_t z||^2 / n + penalties`` from z_t.
    """
    jac, directions, region, rectangle, _ = _jacobian(forward, images, select, channels, max_rows, seed, with_area)
    gates = _fit_quadratic(jac, norms, lambda_, gamma, steps, deadline)
    goal = reference.flatten(1) @ directions.T  # D f_0, (m, R)
    target = None
    for _ in range(relinearise):
        _check_deadline(deadline)
        jac, _, _, _, at_gates = _jacobian(forward, images, select, channels, max_rows, seed, False, gates, region)
        target = goal - at_gates + (jac @ gates.unsqueeze(-1)).squeeze(-1)
        gates = _fit_quadratic(jac, norms, lambda_, gamma, steps, deadline, target, gates)
    jac64, target64 = _scaled64(jac, norms, target)
    _, grad = _quadratic_objective(jac64, lambda_, gamma, None, target64)(_float64(gates).reshape(-1))
    return gates, region, rectangle, torch.from_numpy(grad.reshape(gates.shape))


# ----------------------------------------------------------------------- engine
def _result(gates, fidelity, pressure, earlier_layer, target_layer, channel, area, area_neurons, mode, region, earlier_shape, params, start,
            crop=None):
    """The result; ``pressure`` (m, C): the objective's gradient at the gates, which orders maps of equal score."""
    scores = gates.mean(axis=0)
    hold = pressure.mean(axis=0)
    ranking = sorted(range(len(scores)), key=lambda c: (-scores[c], hold[c], c))
    return ContributionResult(
        earlier_layer=earlier_layer, target_layer=target_layer, channel=channel, area=area, area_neurons=area_neurons,
        mode=mode, gates=gates, scores=scores, ranking=ranking, fidelity=fidelity, region=region,
        earlier_shape=tuple(int(v) for v in earlier_shape), params=params, seconds=time.perf_counter() - start, crop=crop,
    )


def _region_from_gradient(weight: torch.Tensor) -> Tuple[torch.Tensor, Tuple[int, int, int, int]]:
    """(H_e, W_e) float mask and rectangle: the bounding box of the positions where ``weight`` > 0."""
    support = weight > 0
    if not support.any():
        raise ValueError("the selected target neurons do not depend on the earlier layer on these images; pick an earlier layer on the path to the target")
    ys = torch.nonzero(support.any(dim=1)).flatten()
    xs = torch.nonzero(support.any(dim=0)).flatten()
    y0, y1, x0, x1 = int(ys[0]), int(ys[-1]) + 1, int(xs[0]), int(xs[-1]) + 1
    mask = torch.zeros(support.shape, device=support.device)
    mask[y0:y1, x0:x1] = 1.0
    return mask, (y0, x0, y1, x1)


def _receptive_field(forward: _GatedForward, images: torch.Tensor, select, channels: int) -> Tuple[torch.Tensor, Tuple[int, int, int, int]]:
    """Region of the earlier maps the selected neurons depend on (bounding box of the gradient's support)."""
    with torch.enable_grad():
        z = torch.ones(images.shape[0], channels, device=images.device, requires_grad=True)
        preserved = select(forward.run(z, None))
        (grad,) = torch.autograd.grad(preserved.sum(), forward.gated)
    return _region_from_gradient(grad.abs().sum(dim=(0, 1)))


def _local_crop(forward: _GatedForward, area_mask: torch.Tensor, channel: int, reference: torch.Tensor,
                earlier_hw: Tuple[int, int], margin: int):
    """The crop of the earlier maps that alone determines the selected target neurons.

    ``area_mask``: (H_t, W_t) bool; ``reference``: (m, P) the selected neurons of the
    ungated pass. Candidate crop: the area's bounding box widened by ``margin`` target
    neurons on each side, times the stride ``S = H_e / H_t`` (an integer, else no crop),
    so that it starts at a multiple of S and the pass on the crop yields the target map
    from neuron ``start / S`` on. A candidate is accepted when

    1. structurally, the selected neurons do not depend on anything outside it: with
       every earlier neuron outside set to NaN they stay finite (the margin doubles
       until they do; a global operation such as a squeeze-and-excitation mean makes
       every candidate fail);
    2. numerically, the pass on the crop alone reproduces ``reference`` (the zero padding
       at the crop's edges and the alignment change none of the selected neurons; a
       branch that still carries the whole maps fails with a shape error).

    Returns ``((crop (y0, x0, y1, x1), (h, w) bool mask of the selected neurons on the
    cropped target output), margin)``; ``(None, margin)`` when the candidate is the whole
    map already (nothing to gain); ``(None, None)`` when the sub-network between the
    layers is not spatially local (no crop will ever pass). Call under ``torch.no_grad``.
    """
    (he, we), (ht, wt) = earlier_hw, tuple(area_mask.shape)
    if he % ht or we % wt:
        return None, None
    sy, sx = he // ht, we // wt
    ys = torch.nonzero(area_mask.any(dim=1)).flatten()
    xs = torch.nonzero(area_mask.any(dim=0)).flatten()
    ty0, ty1, tx0, tx1 = int(ys[0]), int(ys[-1]) + 1, int(xs[0]), int(xs[-1]) + 1
    first = True
    while True:
        rect = (max(ty0 - margin, 0) * sy, max(tx0 - margin, 0) * sx, min((ty1 + margin) * sy, he), min((tx1 + margin) * sx, we))
        if rect == (0, 0, he, we):
            return None, (margin if first else None)
        forward.poison = rect
        try:
            poisoned = forward.run(None, None)
        finally:
            forward.poison = None
        if bool(torch.isfinite(poisoned[:, channel][:, area_mask]).all()):
            break
        margin, first = margin * 2, False
    forward.crop = rect
    try:
        out = forward.run(None, None)
    except RuntimeError:
        return None, None
    finally:
        forward.crop = None
    oy, ox = rect[0] // sy, rect[1] // sx
    window = area_mask[oy : oy + out.shape[-2], ox : ox + out.shape[-1]] if out.dim() == 4 else area_mask[:0]
    if tuple(window.shape) != tuple(out.shape[2:]) or int(window.sum()) != int(area_mask.sum()):
        return None, None
    scale = max(1.0, float(reference.abs().max()))
    if not torch.allclose(out[:, channel][:, window], reference, rtol=1e-4, atol=1e-5 * scale):
        return None, None
    return (rect, window), margin


def _shift(rectangle: Optional[Tuple[int, int, int, int]], crop: Optional[Tuple[int, int, int, int]]):
    """A rectangle on the crop's grid -> the same rectangle on the whole earlier grid."""
    if rectangle is None or crop is None:
        return rectangle
    return (rectangle[0] + crop[0], rectangle[1] + crop[1], rectangle[2] + crop[0], rectangle[3] + crop[1])


class ContributionSession:
    """Many contribution queries on one model, image batch, earlier layer and target layer.

    The constructor runs the one real forward pass (up to the target) and prepares the
    replay between the two layers; every query (:meth:`feature_map` for a channel and
    an area, or :meth:`prediction` when ``target_layer`` is None) then re-runs only the
    part between the layers, so brushing another area of the same map is cheap. The
    model must not change while a session is used. ``images``: (m, C_in, H, W).
    """

    def __init__(self, model: nn.Module, images: torch.Tensor, earlier_layer: str, target_layer: Optional[str] = None,
                 deadline: Optional[float] = None):
        self.images = _check_images(images)
        if earlier_layer == target_layer:
            raise ValueError(f"earlier layer and target layer are both {target_layer!r}; pick an earlier layer closer to the input")
        self.model, self.earlier_layer, self.target_layer = model, earlier_layer, target_layer
        self._forward = _GatedForward(model, earlier_layer, target_layer)
        with _analysis_mode(model), self._forward.hooks(), torch.no_grad():
            self._output = self._forward.prepare(self.images, earlier_layer, target_layer)
        self.earlier_shape = tuple(int(v) for v in self._forward.gated.shape[1:])
        self._crop_margin: Optional[int] = 1  # in target neurons; None: the layers are not spatially local, never crop
        _check_deadline(deadline)

    @property
    def target_shape(self) -> Tuple[int, ...]:
        """Shape of the target output for one example: (C_t, H_t, W_t), or (K,) for the prediction."""
        return tuple(int(v) for v in self._output.shape[1:])

    def feature_map(self, channel: int, area: Optional[Area] = None, mode: str = "sgd", lambda_: float = DEFAULT_LAMBDA,
                    gamma: float = DEFAULT_GAMMA, steps: int = DEFAULT_STEPS, lr: float = DEFAULT_LR,
                    max_jacobian_rows: int = DEFAULT_MAX_JACOBIAN_ROWS, seed: int = 0,
                    deadline: Optional[float] = None, crop: bool = True, relinearise: int = DEFAULT_RELINEARISE) -> ContributionResult:
        """Eq. 7 (``area`` None) or Eq. 8 for map ``channel`` of the target layer (see :func:`feature_map_contributions`).

        With an area and ``crop`` (default), the part between the layers runs only on the
        crop of the earlier maps that the area depends on, when :func:`_local_crop` finds
        one; ``crop=False`` always runs on the whole maps (same result, slower).
        """
        start = time.perf_counter()
        _check_params(mode, lambda_, gamma, steps, relinearise)
        out = self._output
        if self.target_layer is None:
            raise ValueError("this session's target is the prediction; create one with a target_layer for feature maps")
        if out.dim() != 4:
            raise ValueError(f"the target layer outputs shape {tuple(out.shape)}, not a (B, C, H, W) feature map; pick a convolutional block")
        if not isinstance(channel, (int, np.integer)) or isinstance(channel, bool) or not 0 <= channel < out.shape[1]:
            raise ValueError(f"channel {channel!r} does not exist in target layer {self.target_layer!r}: it has {out.shape[1]} feature maps (0..{out.shape[1] - 1})")
        channel = int(channel)
        rectangle, mask = None, None
        if area is None:
            neurons = int(out.shape[2] * out.shape[3])
            select = lambda o: o[:, channel]  # noqa: E731
        else:
            mask, rectangle = _area_mask(area, int(out.shape[2]), int(out.shape[3]))
            mask = mask.to(out.device)
            neurons = int(mask.sum())
            select = lambda o: o[:, channel][:, mask]  # noqa: E731
        params = dict(lambda_=lambda_, gamma=gamma, steps=steps, lr=lr, max_jacobian_rows=max_jacobian_rows, seed=seed, relinearise=relinearise)
        gates, fidelity, pressure, region, used_crop = self._fit(select, mask, channel if crop else None, mode, params, deadline)
        return _result(gates, fidelity, pressure, self.earlier_layer, self.target_layer, channel, rectangle, neurons, mode, region,
                       self.earlier_shape, _public(params), start, used_crop)

    def prediction(self, mode: str = "sgd", lambda_: float = DEFAULT_LAMBDA, gamma: float = DEFAULT_GAMMA,
                   steps: int = DEFAULT_STEPS, lr: float = DEFAULT_LR, max_jacobian_rows: int = DEFAULT_MAX_JACOBIAN_ROWS,
                   seed: int = 0, deadline: Optional[float] = None, relinearise: int = DEFAULT_RELINEARISE) -> ContributionResult:
        """Contributions to the prediction (centred logits; see :func:`prediction_contributions`)."""
        start = time.perf_counter()
        _check_params(mode, lambda_, gamma, steps, relinearise)
        if self.target_layer is not None:
            raise ValueError("this session's target is a feature map; create one with target_layer=None for the prediction")
        if self._output.dim() != 2:
            raise ValueError(f"the model outputs shape {tuple(self._output.shape)}; contributions to the prediction need logits (B, K)")
        params = dict(lambda_=lambda_, gamma=gamma, steps=steps, lr=lr, max_jacobian_rows=max_jacobian_rows, seed=seed, relinearise=relinearise)
        gates, fidelity, pressure, _, _ = self._fit(lambda o: o - o.mean(dim=1, keepdim=True), None, None, mode, params, deadline)
        return _result(gates, fidelity, pressure, self.earlier_layer, None, None, None, 0, mode, None, self.earlier_shape, _public(params), start)

    def _fit(self, select, area_mask: Optional[torch.Tensor], crop_channel: Optional[int], mode: str, params: Dict[str, Any],
             deadline: Optional[float]):
        """(gates (m, C), fidelity (m,), gradient at the gates (m, C), gated region rectangle or None, crop or None)
        for the preserved ``select(out)``.

        ``area_mask``: (H_t, W_t) bool for Eq. 8, else None; ``crop_channel``: the target
        channel when the computation may run on a crop of the earlier maps, else None.
        """
        forward, with_area = self._forward, area_mask is not None
        reference = select(self._output).detach()
        norms = reference.flatten(1).pow(2).sum(1)
        if not bool((norms > 0).all()):
            zero = [int(i) for i in torch.nonzero(norms == 0).flatten()]
            raise ValueError(
                f"the preserved neurons are all zero for example(s) {zero}: nothing to explain; "
                "select an area where the target map is active on every example"
            )
        with _analysis_mode(self.model), forward.hooks():
            _check_deadline(deadline)
            crop = None
            if with_area and crop_channel is not None and self._crop_margin is not None:
                with torch.no_grad():
                    found, self._crop_margin = _local_crop(forward, area_mask, crop_channel, reference, self.earlier_shape[1:], self._crop_margin)
                if found is not None:
                    crop, window = found
                    select = lambda o: o[:, crop_channel][:, window]  # noqa: E731
            try:
                forward.crop = crop
                gates, fidelity, pressure, rectangle = self._fit_gates(select, reference, norms, with_area, mode, params, deadline)
            finally:
                forward.crop = None
        return gates, fidelity, pressure, _shift(rectangle, crop), crop

    def _fit_gates(self, select, reference, norms, with_area, mode, params, deadline):
        """The fit itself (inside the hooks, on the crop when ``forward.crop`` is set)."""
        forward, images, channels = self._forward, self.images, self.earlier_shape[0]
        lambda_, gamma, steps = params["lambda_"], params["gamma"], params["steps"]
        if mode == "sgd":
            region, rectangle = _receptive_field(forward, images, select, channels) if with_area else (None, None)
            with torch.enable_grad():
                gates, params["steps_run"], pressure = _fit_sgd(forward, images, select, reference, norms, region, channels, lambda_, gamma,
                                                                steps, params["lr"], deadline)
        else:
            gates, region, rectangle, pressure = _fit_linearised(forward, images, select, reference, norms, with_area, channels, lambda_, gamma, steps,
                                                       params["max_jacobian_rows"], params["seed"], params["relinearise"], deadline)
        with torch.no_grad():
            fidelity = _relative_error(select(forward.run(gates, region)), reference, norms)
        return gates.cpu().numpy(), fidelity.cpu().numpy(), pressure.cpu().numpy(), rectangle


def _public(params: Dict[str, Any]) -> Dict[str, Any]:
    """Engine parameters as reported in results (``lambda`` rather than ``lambda_``)."""
    return {("lambda" if k == "lambda_" else k): v for k, v in params.items()}


def feature_map_contributions(
    model: nn.Module,
    images: torch.Tensor,
    target_layer: str,
    channel: int,
    earlier_layer: str,
    area: Optional[Area] = None,
    mode: str = "sgd",
    lambda_: float = DEFAULT_LAMBDA,
    gamma: float = DEFAULT_GAMMA,
    steps: int = DEFAULT_STEPS,
    lr: float = DEFAULT_LR,
    max_jacobian_rows: int = DEFAULT_MAX_JACOBIAN_ROWS,
    seed: int = 0,
    deadline: Optional[float] = None,
    relinearise: int = DEFAULT_RELINEARISE,
) -> ContributionResult:
    """Contribution of each feature map of ``earlier_layer`` to map ``channel`` of ``target_layer``.

    ``images``: (m, C_in, H, W), the m datapaths' examples analysed together (in the
    model's input space; [0, 1] for a ClassifierWrapper). ``area``: None for Eq. 7
    (whole target map) or, for Eq. 8, a half-open rectangle ``(y0, x0, y1, x1)`` in
    target-map neuron coordinates or an ``(H_t, W_t)`` boolean neuron mask.
    ``steps``: the most optimiser steps (SGD stops earlier once its loss plateaus) or a
    50th of the solver's iteration cap (quadratic). ``relinearise``: Gauss-Newton
    re-linearisations of the quadratic mode after the one at z = 1. ``deadline``: a ``time.monotonic()`` value after which
    :class:`ContributionTimeout` is raised (checked between steps). Raises ValueError
    for an unknown layer or channel, an area outside the map, or an earlier layer that
    does not run before the target. One query of a fresh :class:`ContributionSession`.
    """
    start = time.perf_counter()
    _check_params(mode, lambda_, gamma, steps, relinearise)
    session = ContributionSession(model, images, earlier_layer, target_layer, deadline=deadline)
    result = session.feature_map(channel, area, mode, lambda_, gamma, steps, lr, max_jacobian_rows, seed, deadline, relinearise=relinearise)
    result.seconds = time.perf_counter() - start
    return result


def prediction_contributions(
    model: nn.Module,
    images: torch.Tensor,
    layer: str,
    mode: str = "sgd",
    lambda_: float = DEFAULT_LAMBDA,
    gamma: float = DEFAULT_GAMMA,
    steps: int = DEFAULT_STEPS,
    lr: float = DEFAULT_LR,
    max_jacobian_rows: int = DEFAULT_MAX_JACOBIAN_ROWS,
    seed: int = 0,
    deadline: Optional[float] = None,
    relinearise: int = DEFAULT_RELINEARISE,
) -> ContributionResult:
    """Contribution of each feature map of ``layer`` to the final prediction.

    The preserved quantity is the centred logits (m, K) (see the module docstring),
    with gates on ``layer`` only; other arguments as in :func:`feature_map_contributions`.
    """
    start = time.perf_counter()
    _check_params(mode, lambda_, gamma, steps, relinearise)
    session = ContributionSession(model, images, layer, None, deadline=deadline)
    result = session.prediction(mode, lambda_, gamma, steps, lr, max_jacobian_rows, seed, deadline, relinearise)
    result.seconds = time.perf_counter() - start
    return result
