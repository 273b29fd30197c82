"""Checks of the extraction's inputs (clear errors naming the fix) and the model's device context."""

from __future__ import annotations

import contextlib
from typing import Any, Dict, Iterator, List, Optional, Sequence, Union

import numpy as np
import torch
from torch import nn

from ..analysis import ROLES
from ..gating import LayerSpec, select_layers_and_blocks

DEFAULT_ORDER = ("adversarial", "source", "target")


def as_images(images: Any) -> torch.Tensor:
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


def check_roles(roles: Sequence[str], n: int) -> List[str]:
    if isinstance(roles, str):
        raise TypeError(f"roles must be a sequence of {n} role names, not the single string {roles!r}")
    roles = list(roles)
    if len(roles) != n:
        raise ValueError(f"got {len(roles)} roles for {n} images; give one role per image from {ROLES}")
    for i, role in enumerate(roles):
        if role not in ROLES:
            raise ValueError(f"role {role!r} of image {i} is unknown; use one of {ROLES}")
    return roles


def check_names(names: Optional[Sequence[str]], roles: List[str]) -> List[str]:
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


def stages_of(order: Optional[Sequence[Union[str, int]]], roles: List[str]) -> List[List[int]]:
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
def prepared(model: nn.Module, device: Optional[str]) -> Iterator[torch.device]:
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


def check_fits(model: nn.Module, x: torch.Tensor) -> None:
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


def select(model: nn.Module, x1: torch.Tensor, layers: LayerSpec):
    try:
        return select_layers_and_blocks(model, x1, layers)
    except RuntimeError as e:
        first = str(e).splitlines()[0] if str(e) else type(e).__name__
        raise ValueError(
            f"the model cannot process images of shape {tuple(x1.shape[1:])} ({first}); "
            "check the image size and channel count the model expects"
        ) from e


def check_logits(logits: Any, n: int) -> None:
    if not isinstance(logits, torch.Tensor) or logits.dim() != 2 or logits.shape[0] != n or logits.shape[1] < 2:
        shape = tuple(logits.shape) if isinstance(logits, torch.Tensor) else type(logits).__name__
        raise ValueError(
            f"the model returned {shape}, not logits of shape ({n}, num_classes >= 2); "
            "wrap it so that forward returns the class logits tensor"
        )
    if not torch.isfinite(logits).all():
        raise ValueError("the model returned NaN or infinite logits for these images; check the model's weights and input")
