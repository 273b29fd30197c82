"""The gated sub-network replay: the part of the forward pass between the earlier and the target layer."""

from __future__ import annotations

import contextlib
from typing import Any, Dict, Iterator, List, Optional, Tuple

import torch
from torch import nn

from .model_access import find_module
from .lca_graph import called_children
from .replay import StopForward, clone, recorded_outputs, traced_replay


class GatedForward:
    """Runs the model from the earlier layer to the target layer with gates applied.

    Only the part of the forward pass between the two layers is re-run per call:
    :meth:`prepare` runs the model once up to the target, takes the fx graph of the lowest
    common ancestor module of the two layers (LCA; its direct children kept as calls:
    :func:`lca_graph`) and caches the values the graph's nodes after the child holding the
    earlier layer read: the outputs of the LCA's children in that one pass, where a child
    was called once and its output not modified in place since, else computed by the
    graph's nodes before that child; :meth:`run` replays the rest.
    When the LCA has no such graph, or its graph does not reproduce the LCA's output,
    the replay calls the LCA with its cached inputs. Cached values
    are cloned per replay (in-place ops such as ``ReLU(inplace=True)`` stay safe).

    ``run(gates, region)`` -> the target output (the model output when the target is
    None); ``gates``: (m, C) or None for the ungated network; ``region``: (H_e, W_e)
    float mask of the gated neurons or None for whole maps. The last gated earlier
    output is kept in ``self.gated`` (and before the gates in ``self.ungated``).

    Two rectangles ``(y0, x0, y1, x1)`` on the earlier grid change what the earlier layer
    passes on (see :func:`local_crop`): ``crop`` passes only that crop (the rest of the
    pass then runs on the smaller maps; ``region`` and ``self.gated`` have the crop's
    shape), ``poison`` sets every earlier neuron outside it to NaN.
    """

    def __init__(self, model: nn.Module, earlier_path: str, target_path: Optional[str]):
        self.model = model
        self.earlier = find_module(model, earlier_path, "earlier layer")
        self.target = find_module(model, target_path, "target layer") if target_path is not None else None
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
        self._stop_at(output)

    def _stop_at(self, output: Any) -> None:
        """Keep the target's output and stop the pass (nothing after the target is needed)."""
        if self.target is None:
            return
        self.captured = output
        raise StopForward

    @contextlib.contextmanager
    def hooks(self) -> Iterator["GatedForward"]:
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
        units = {id(m): m for path in ancestors for m in called_children(self.model.get_submodule(path))}.values()
        try:
            with recorded_outputs(units) as recorded:
                out = self.model(images)
            if self.target is not None:
                raise ValueError(f"target layer {target_path!r} is never called in a forward pass of the model; pick a module that runs")
        except StopForward:
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
        whole_lca = lambda: lca(*[clone(a) for a in captured["args"]], **{k: clone(v) for k, v in captured["kwargs"].items()})
        # the values before the earlier child from the pass above; should they not reproduce the model (an in-place
        # operation the pass could not see), computed again by the graph; else the LCA replayed as a whole
        for reused in (recorded, None):
            traced = traced_replay(lca, captured["args"], captured["kwargs"], self._earlier_rel, self._gate,
                                   None if self._target_rel else self._stop_at, reused)
            if traced is None:
                break
            self._replay = traced
            try:
                replayed = self.run(None, None)
            except ValueError:
                break  # the graph's output is not the module's (e.g. a loaded model's outputs, flattened)
            if (isinstance(out, torch.Tensor) and isinstance(replayed, torch.Tensor) and replayed.shape == out.shape
                    and torch.allclose(replayed, out, rtol=1e-4, atol=1e-5)):
                return out
        self._replay = whole_lca
        if traced is None:
            self.run(None, None)  # raises ValueError when the earlier layer is not on the way to the target
        return out

    def run(self, gates: Optional[torch.Tensor], region: Optional[torch.Tensor]) -> torch.Tensor:
        """The target output (B, C_t, H_t, W_t), or the model output when the target is None, with
        ``gates`` (m, C) (None: ungated) on the ``region`` (H_e, W_e) float mask (None: whole maps).

        Raises ValueError when the earlier layer is not on the way to the target or the target's
        output is not a tensor.
        """
        self.gates, self.region, self.captured, self.gated = gates, region, None, None
        try:
            out = self._replay()
        except StopForward:
            out = self.captured
        if self.gated is None:
            raise ValueError("the earlier layer was never called on the way to the target; pick a module on the path to the target")
        if not isinstance(out, torch.Tensor):
            raise ValueError(f"the target layer outputs {type(out).__name__}, not a tensor; pick a module that outputs a feature map")
        return out
