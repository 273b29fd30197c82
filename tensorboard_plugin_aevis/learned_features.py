"""Learned features of feature maps: the top-activating receptive-field crops of reference images.

For each requested feature map (layer, channel), every reference image's activation
map is reduced to its maximum and the position of that maximum; the ``top_k`` images
with the highest maxima are kept, each with the input-pixel box of the receptive field
of the argmax position (paper Sec. 5.3, neuron level).

Receptive field, computed empirically (works for any architecture, residual or
concatenating, padded or strided): the box of position (h, w) at a layer is the
bounding box of the input pixels where ``d(sum_c a[c, h, w]) / d(input)`` is non-zero,
evaluated at a fixed uniform-noise input of the reference images' size. Summing over
every channel makes dead ReLUs or max-pool choices in a single channel irrelevant, so
the box is the set of pixels that can influence that position, clipped to the image.
Boxes are ``(y0, x0, y1, x1)`` with exclusive ends, in input pixels.

Activations come from one forward pass per batch of reference images with forward
hooks on the requested layers; the hooks are removed afterwards and the model's
training flags restored.
"""

from __future__ import annotations

from typing import Dict, List, Mapping, Optional, Sequence, Tuple, Union

import torch
from torch import nn

from .models import eval_mode, model_device

Box = Tuple[int, int, int, int]
Hit = Tuple[int, float, Box]
ChannelSpec = Union[None, Mapping[str, Optional[Sequence[int]]], Sequence[Optional[Sequence[int]]]]


def learned_features(
    model: nn.Module,
    layers: Sequence[str],
    channels_per_layer: ChannelSpec,
    reference_images: torch.Tensor,
    top_k: int = 3,
    batch_size: int = 16,
) -> Dict[str, Dict[int, List[Hit]]]:
    """``{layer: {channel: [(image_index, activation, (y0, x0, y1, x1)), ...]}}``, best first.

    ``layers``: module paths with 4-D outputs (B, C, H, W); ``channels_per_layer``:
    a mapping layer -> channels, or a list parallel to ``layers`` (None = all channels
    of that layer; None overall = all channels of every layer); ``reference_images``:
    (N, C, H, W) in [0, 1]. Each channel lists at most ``min(top_k, N)`` distinct images.
    """
    if top_k < 1:
        raise ValueError(f"top_k must be at least 1, got {top_k}")
    if not isinstance(reference_images, torch.Tensor) or reference_images.dim() != 4 or len(reference_images) == 0:
        raise ValueError("reference_images must be a non-empty (N, C, H, W) tensor of images in [0, 1]")
    if not torch.isfinite(reference_images).all():
        raise ValueError("reference_images contain NaN or infinite values")
    modules = _modules(model, layers)
    wanted = _channels(layers, channels_per_layer)
    best = _top_activations(model, modules, wanted, reference_images, top_k, batch_size)
    boxes = receptive_field_boxes(
        model, modules, {layer: {pos for hits in best[layer].values() for _, _, pos in hits} for layer in layers},
        tuple(reference_images.shape[1:]),
    )
    return {
        layer: {c: [(i, a, boxes[layer][pos]) for i, a, pos in hits] for c, hits in best[layer].items()}
        for layer in layers
    }


def receptive_field_boxes(
    model: nn.Module,
    modules: Mapping[str, nn.Module],
    positions: Mapping[str, set],
    image_shape: Tuple[int, int, int],
) -> Dict[str, Dict[Tuple[int, int], Box]]:
    """``{layer: {(h, w): (y0, x0, y1, x1)}}``: the receptive field of each position (module docstring).

    Two gradient positions per layer suffice: convolutions are translation-equivariant,
    so the far edges of every box follow from the first position's box (its bottom and
    right edges) and the last position's box (its top and left edges) shifted by the
    layer's stride (input size / feature-map size), then clipped to the image. An edge
    that already reaches the image border there reaches it for every later position.
    """
    noise = torch.rand(image_shape, generator=torch.Generator().manual_seed(0))
    device = model_device(model)
    noise = noise.to(device)
    _, height, width = image_shape
    boxes: Dict[str, Dict[Tuple[int, int], Box]] = {}
    with eval_mode(model):
        for layer, module in modules.items():
            todo = sorted(positions.get(layer, ()))
            boxes[layer] = {}
            if not todo:
                continue
            feature_h, feature_w = _run_until(model, module, noise[None]).shape[-2:]
            last = (feature_h - 1, feature_w - 1)
            measured = _measured_boxes(model, module, noise, [(0, 0), last])
            _, _, first_y1, first_x1 = measured[(0, 0)]
            last_y0, last_x0, _, _ = measured[last]
            stride_y, stride_x = height / feature_h, width / feature_w
            for h, w in todo:
                y1 = height if first_y1 >= height else min(height, first_y1 + round(h * stride_y))
                x1 = width if first_x1 >= width else min(width, first_x1 + round(w * stride_x))
                y0 = 0 if last_y0 <= 0 else max(0, last_y0 - round((last[0] - h) * stride_y))
                x0 = 0 if last_x0 <= 0 else max(0, last_x0 - round((last[1] - w) * stride_x))
                boxes[layer][(h, w)] = (y0, x0, y1, x1)
    return boxes


def _measured_boxes(model: nn.Module, module: nn.Module, noise: torch.Tensor,
                    chunk: Sequence[Tuple[int, int]]) -> Dict[Tuple[int, int], Box]:
    """Bounding boxes of the input pixels with a non-zero gradient, one per position in ``chunk``."""
    image_shape = tuple(noise.shape)
    x = noise.expand(len(chunk), *image_shape).clone().requires_grad_(True)
    output = _run_until(model, module, x)
    rows = torch.arange(len(chunk), device=x.device)
    hs = torch.tensor([h for h, _ in chunk], device=x.device)
    ws = torch.tensor([w for _, w in chunk], device=x.device)
    (grad,) = torch.autograd.grad(output[rows, :, hs, ws].sum(), x)
    support = grad.abs().sum(dim=1) > 0  # (P, H, W)
    result: Dict[Tuple[int, int], Box] = {}
    for p, pos in enumerate(chunk):
        ys = torch.nonzero(support[p].any(dim=1)).flatten()
        xs = torch.nonzero(support[p].any(dim=0)).flatten()
        if len(ys) == 0:  # the position ignores the input (e.g. constant): the whole image
            result[pos] = (0, 0, image_shape[1], image_shape[2])
        else:
            result[pos] = (int(ys[0]), int(xs[0]), int(ys[-1]) + 1, int(xs[-1]) + 1)
    return result


# ----------------------------------------------------------------------------- helpers


class _Stop(Exception):
    """Raised by a hook once the wanted layer has run, to skip the rest of the forward pass."""


def _run_until(model: nn.Module, module: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """``module``'s output (B, C, H, W) when ``model`` runs on ``x``; the forward pass stops there."""
    captured: List[torch.Tensor] = []

    def hook(_m, _inputs, output):
        captured.append(output)
        raise _Stop

    handle = module.register_forward_hook(hook)
    try:
        model(x)
    except _Stop:
        pass
    finally:
        handle.remove()
    return captured[0]


def _modules(model: nn.Module, layers: Sequence[str]) -> Dict[str, nn.Module]:
    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be a torch.nn.Module, got {type(model).__name__}")
    if isinstance(layers, str) or not layers:
        raise ValueError("layers must be a non-empty list of module paths, e.g. ['layer1.0', 'layer2.1']")
    named = dict(model.named_modules())
    missing = [l for l in layers if l not in named]
    if missing:
        raise ValueError(f"layers {missing} are not modules of the model; pass paths from model.named_modules()")
    return {l: named[l] for l in layers}


def _channels(layers: Sequence[str], spec: ChannelSpec) -> Dict[str, Optional[List[int]]]:
    """layer -> requested channels (None = all)."""
    if spec is None:
        return {l: None for l in layers}
    if isinstance(spec, Mapping):
        unknown = [l for l in spec if l not in layers]
        if unknown:
            raise ValueError(f"channels_per_layer names layers {unknown} that are not in layers")
        return {l: (None if spec.get(l) is None else [int(c) for c in spec[l]]) for l in layers}
    if len(spec) != len(layers):
        raise ValueError(f"channels_per_layer has {len(spec)} entries for {len(layers)} layers: give one per layer")
    return {l: (None if c is None else [int(x) for x in c]) for l, c in zip(layers, spec)}


def _top_activations(model, modules, wanted, images, top_k, batch_size):
    """{layer: {channel: [(image_index, max activation, (h, w) of the max)]}} best first.

    A module called more than once per forward pass is read at its first call (as
    :func:`receptive_field_boxes` does).
    """
    # per layer: (K, <=top_k) running best values, image indices and flat positions
    state: Dict[str, Tuple[torch.Tensor, torch.Tensor, torch.Tensor]] = {}
    widths: Dict[str, int] = {}
    seen: set = set()
    offset = [0]

    def hook_for(layer):
        def hook(_m, _inputs, output):
            if layer in seen:
                return
            seen.add(layer)
            if not isinstance(output, torch.Tensor) or output.dim() != 4:
                shape = tuple(output.shape) if isinstance(output, torch.Tensor) else type(output).__name__
                raise ValueError(f"layer {layer!r} outputs {shape}, not a (B, C, H, W) feature map; pick a convolutional layer")
            if wanted[layer] is None:
                wanted[layer] = list(range(output.shape[1]))
            bad = [c for c in wanted[layer] if not 0 <= c < output.shape[1]]
            if bad:
                raise ValueError(f"channels {bad} out of range for layer {layer!r} with {output.shape[1]} channels")
            widths[layer] = output.shape[3]
            values, positions = output[:, wanted[layer]].flatten(2).max(dim=2)  # (B, K)
            values, positions = values.T.float().cpu(), positions.T.cpu()
            index = torch.arange(offset[0], offset[0] + output.shape[0]).expand_as(values)
            if layer in state:
                old_values, old_index, old_positions = state[layer]
                values = torch.cat([old_values, values], dim=1)
                index = torch.cat([old_index, index], dim=1)
                positions = torch.cat([old_positions, positions], dim=1)
            order = torch.sort(values, dim=1, descending=True, stable=True).indices[:, :top_k]
            state[layer] = (values.gather(1, order), index.gather(1, order), positions.gather(1, order))

        return hook

    handles = [m.register_forward_hook(hook_for(l)) for l, m in modules.items()]
    device = model_device(model)
    try:
        with eval_mode(model), torch.no_grad():
            for start in range(0, len(images), batch_size):
                offset[0] = start
                seen.clear()
                model(images[start : start + batch_size].to(device))
    finally:
        for h in handles:
            h.remove()
    result: Dict[str, Dict[int, List[Tuple[int, float, Tuple[int, int]]]]] = {}
    for layer in modules:
        if layer not in state:
            raise ValueError(f"layer {layer!r} never ran in the forward pass; pick a layer the model uses")
        values, index, positions = state[layer]
        w = widths[layer]
        result[layer] = {
            c: [(int(i), float(v), (int(p) // w, int(p) % w)) for v, i, p in zip(values[k], index[k], positions[k])]
            for k, c in enumerate(wanted[layer])
        }
    return result
