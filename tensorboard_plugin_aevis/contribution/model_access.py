"""Finding a layer by its module path, and the model's state for the duration of an analysis."""

from __future__ import annotations

import contextlib
from typing import Iterator

from torch import nn

from ..models import exact_float32


def find_module(model: nn.Module, path: str, what: str) -> nn.Module:
    """The submodule of ``model`` at ``path`` (``what`` names it in errors).

    Raises TypeError for a path that is not a non-empty string, ValueError (with similar paths) for an unknown one.
    """
    if not isinstance(path, str) or not path:
        raise TypeError(f"{what} must be a module path string such as 'layer3.1', got {path!r}")
    modules = dict(model.named_modules())
    if path not in modules:
        candidates = [n for n in modules if n and (path in n or n.endswith(path.split(".")[-1]))][:8]
        hint = f"; similar paths: {', '.join(candidates)}" if candidates else "; list them with [n for n, _ in model.named_modules()]"
        raise ValueError(f"unknown {what} {path!r}: the model has no module with that path{hint}")
    return modules[path]


@contextlib.contextmanager
def analysis_mode(model: nn.Module) -> Iterator[None]:
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
