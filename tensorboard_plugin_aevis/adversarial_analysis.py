"""One call from a training script: attack, extract both methods, pick the target, log.

:func:`analyze_adversarial` is the pipeline the ``aevis analyze`` command, the demos
and a training script share: make (or take) the adversarial example of a source image,
extract the datapaths of the adversarial example, the source and N normal images of
the target class with each method (the constrained chain and the DGR baseline), pick
the representative target among the N (paper Sec. 6.2.1:
:func:`.datapath_metrics.representative_target`), score every example's
adversarialness, and log each analysis with ``summary_writers.add_analysis``.

How the adversarial example and the target were chosen is recorded, in words, in
``Analysis.params["provenance"]`` (the dashboard shows it). Problems that do not stop
the analysis (an attack that does not fool the model, target images of another
class, no target images) are issued as ``UserWarning`` and kept in
:attr:`AdversarialAnalysis.warnings`.
"""

from __future__ import annotations

import dataclasses
import warnings
from typing import Any, Dict, List, Optional, Sequence, Union

import torch
from torch import nn

from .analysis import Analysis
from .models import ClassifierWrapper, eval_mode, model_device

ATTACKS = ("mi-fgsm", "pgd", "fgsm")
METHODS = ("constrained", "dgr")
DEFAULT_NAME = "{source} -> {adversarial}"
ATTACK_TITLES = {"mi-fgsm": "MI-FGSM", "pgd": "PGD", "fgsm": "FGSM"}


@dataclasses.dataclass
class AdversarialAnalysis:
    """What :func:`analyze_adversarial` computed (and logged).

    ``analyses[method]``: the :class:`.analysis.Analysis` of examples ``[adversarial, source,
    target 0, ..., target N-1]`` (indices 0, 1, 2..N+1). ``representative[method]``: the index of
    the representative target in that analysis (None without target images).
    ``adversarial``: the adversarial image (1, C, H, W) in [0, 1] on the CPU. ``source_label``,
    ``adversarial_label``: the model's predictions; ``fooled``: the attack reached its target
    class (targeted) or left the source label (untargeted). ``provenance``: how the adversarial
    example and the target were chosen, per method (also in ``params["provenance"]``).
    """

    name: str
    step: int
    analyses: Dict[str, Analysis]
    representative: Dict[str, Optional[int]]
    adversarial: torch.Tensor
    source_label: int
    adversarial_label: int
    target_class: Optional[int]
    fooled: bool
    provenance: Dict[str, Dict[str, str]]
    warnings: List[str]


def analyze_adversarial(
    writer: Any,
    model: nn.Module,
    source: torch.Tensor,
    target_class: Union[int, str, None] = None,
    targets: Optional[Union[torch.Tensor, Sequence[torch.Tensor]]] = None,
    *,
    step: int = 0,
    adversarial: Optional[torch.Tensor] = None,
    mean: Optional[Sequence[float]] = None,
    std: Optional[Sequence[float]] = None,
    class_names: Optional[Sequence[str]] = None,
    name: Optional[str] = None,
    source_name: str = "source",
    target_names: Optional[Sequence[str]] = None,
    methods: Sequence[str] = METHODS,
    attack: str = "mi-fgsm",
    eps: float = 16 / 255,
    attack_steps: int = 10,
    layers: Any = "auto",
    extraction_steps: Optional[int] = None,
    extraction_options: Optional[Dict[str, Any]] = None,
    r: Optional[int] = None,
    reference_images: Optional[torch.Tensor] = None,
    save_model: Union[bool, str] = "first-and-latest",
    provenance: Optional[Dict[str, str]] = None,
    device: Optional[str] = None,
    progress: bool = False,
) -> AdversarialAnalysis:
    """Analyse why an adversarial example of ``source`` fools ``model`` and log it at ``step``.

    Args:
        writer: a ``torch.utils.tensorboard.SummaryWriter``, a logdir path, or None (compute only).
        model: a :class:`.models.ClassifierWrapper` (images in [0, 1] -> logits (B, K)), or a plain
            ``nn.Module`` taking normalised images together with ``mean`` and ``std`` (one value per
            channel; pass ``mean=(0,)*C, std=(1,)*C`` for a model that takes [0, 1] images).
        source: the normal source image, (C, H, W) or (1, C, H, W) in [0, 1].
        target_class: class index or name to attack towards (targeted); None: untargeted.
        targets: N normal images of the target class, (N, C, H, W) or a sequence of (C, H, W),
            in [0, 1]; the representative one is chosen per method. None: no targets (no diff curve).
        step: the training step to log at.
        adversarial: a given adversarial image (C, H, W) or (1, C, H, W) instead of attacking
            (then ``target_class`` must be None).
        class_names: K class names (default: the model's ``class_names`` attribute, if any).
        name: the analysis name in the run; ``{source}`` and ``{adversarial}`` in it become the source's
            name and the adversarial example's class (default ``"{source} -> {adversarial}"``).
        source_name, target_names: display names of the examples (targets default ``target 1..N``).
        methods: extraction methods, from ``("constrained", "dgr")``.
        attack, eps, attack_steps: ``"mi-fgsm"``, ``"pgd"`` (seeded random start) or ``"fgsm"``;
            L-infinity budget in [0, 1] pixel units; iterations.
        layers, extraction_steps: ``layers`` and ``steps`` of :func:`.extraction.extract_datapaths`.
        extraction_options: per method name, an :class:`.extraction.ExtractionOptions` for its
            extraction (e.g. ``{"constrained": ExtractionOptions(warmup=0, multiplicative=False)}``, the
            constrained method's former plain Adam);
            ``extraction_steps``, when given, replaces its ``steps``. None: the methods' defaults.
        r: the Eq. 10 window logged with each analysis (default: the paper's 8, capped).
        reference_images: (M, C, H, W) images for the learned features (default: source and targets).
        save_model: the model-artifact policy of ``summary_writers.add_analysis`` (``"first-and-latest"``,
            ``"all"`` or ``"none"``).
        provenance: extra human-readable notes merged into ``params["provenance"]``.
        device: ``"cpu"`` / ``"cuda"`` for the extraction (default: where the model is).
        progress: show progress bars.

    Returns:
        An :class:`AdversarialAnalysis`.

    Raises:
        ValueError / TypeError: bad images, class, method, attack or model (the message names the fix).
    """
    from . import attacks, datapath_metrics
    from .extraction import extract_datapaths

    wrapper = _wrap(model, mean, std, class_names)
    names = list(class_names) if class_names is not None else wrapper.class_names
    unknown = [m for m in methods if m not in METHODS]
    if unknown or not methods:
        raise ValueError(f"methods {list(methods)!r}: use one or both of {METHODS}")
    if attack not in ATTACKS:
        raise ValueError(f"unknown attack {attack!r}; use one of {ATTACKS}")
    extraction_options = dict(extraction_options or {})
    stray = sorted(set(extraction_options) - set(methods))
    if stray:
        raise ValueError(f"extraction_options names {stray}, which are not among methods {list(methods)!r}; key it by those")
    where = model_device(wrapper)
    x_source = _image_batch(source, "source", 1).to(where)
    targets_x = _targets(targets, where)
    with torch.no_grad(), eval_mode(wrapper):
        logits = wrapper(x_source)
    num_classes, source_label = int(logits.shape[1]), int(logits.argmax(1))
    goal = None if target_class is None else _class_index(target_class, names, num_classes)
    notes: List[str] = []

    if adversarial is not None:
        if goal is not None:
            raise ValueError("target_class chooses the attack's target; leave it None when passing a given adversarial image")
        x_adv = _image_batch(adversarial, "adversarial", 1).to(where)
        if x_adv.shape != x_source.shape:
            raise ValueError(f"adversarial image {tuple(x_adv.shape)} and source {tuple(x_source.shape)} differ in shape")
        how = "given by the caller"
    else:
        kwargs = {"target": goal} if goal is not None else {"label": source_label}
        if attack == "fgsm":
            x_adv = attacks.fgsm(wrapper, x_source, eps=eps, **kwargs)
        elif attack == "pgd":
            generator = torch.Generator(device=where).manual_seed(0)
            x_adv = attacks.pgd(wrapper, x_source, eps=eps, steps=attack_steps, generator=generator, **kwargs)
        else:
            x_adv = attacks.mi_fgsm(wrapper, x_source, eps=eps, steps=attack_steps, **kwargs)
        aim = f"targeted at {_quoted(names, goal)}" if goal is not None else f"untargeted (away from {_quoted(names, source_label)})"
        budget = f"eps {eps * 255:g}/255" + ("" if attack == "fgsm" else f", {attack_steps} steps")
        how = f"{ATTACK_TITLES[attack]}, {aim}, {budget}"
    with torch.no_grad(), eval_mode(wrapper):
        adversarial_label = int(wrapper(x_adv).argmax(1))
    fooled = adversarial_label == goal if goal is not None else adversarial_label != source_label
    linf = float((x_adv - x_source).abs().max()) * 255
    adversarial_note = f"{how}; L-inf {linf:.3g}/255 from the source; predicted {_quoted(names, adversarial_label)}"
    if not fooled:
        notes.append(f"the adversarial image does not fool the model (predicted {_quoted(names, adversarial_label)}); "
                     "raise eps or attack_steps")

    n_targets = 0 if targets_x is None else len(targets_x)
    images = torch.cat([x_adv, x_source] + ([targets_x] if n_targets else []))
    roles = ["adversarial", "source"] + ["target"] * n_targets
    example_names = [f"{source_name} (adversarial)", source_name] + _target_names(target_names, n_targets)
    if n_targets:
        with torch.no_grad(), eval_mode(wrapper):
            target_labels = wrapper(targets_x).argmax(1).tolist()
        expected = goal if goal is not None else adversarial_label
        wrong = [n for n, label in zip(example_names[2:], target_labels) if label != expected]
        if wrong:
            notes.append(f"target images {wrong} are not classified as {_quoted(names, expected)}: "
                         "the diff curve compares against another class")
    else:
        notes.append("no target images: no diff curve or diverging / merging layers; pass targets=...")
    scores = _adversarial_scores(wrapper, images)
    name = (name or DEFAULT_NAME).replace("{source}", source_name).replace("{adversarial}", class_name(names, adversarial_label))
    references = images[1:] if reference_images is None else reference_images

    analyses: Dict[str, Analysis] = {}
    representative: Dict[str, Optional[int]] = {}
    provenances: Dict[str, Dict[str, str]] = {}
    for method in methods:
        analysis = extract_datapaths(wrapper, images, roles, example_names, method=method, layers=layers,
                                     class_names=names, device=device, progress=progress,
                                     options=extraction_options.get(method), steps=extraction_steps)
        for example, score in zip(analysis.examples, scores):
            example.adversarial_score = score
        chosen = int(datapath_metrics.representative_target(analysis, 0, list(range(2, 2 + n_targets)))) if n_targets else None
        target_class_name = _quoted(names, goal if goal is not None else adversarial_label)
        if chosen is None:
            target_note = "no target images given"
        elif n_targets == 1:
            target_note = f"the only normal {target_class_name} image given: {example_names[chosen]!r}"
        else:
            target_note = (f"representative (paper Sec. 6.2.1: datapath closest to the adversarial one) of {n_targets} "
                           f"normal {target_class_name} images: {example_names[chosen]!r}")
        record = {"adversarial": adversarial_note, "target": target_note, **dict(provenance or {})}
        analysis.params["provenance"] = record
        if r is not None:
            analysis.params["r"] = int(r)
        if writer is not None:
            import summary_writers

            summary_writers.add_analysis(writer, name, analysis, step, model=wrapper, reference_images=references,
                                         save_model=save_model)
        analyses[method], representative[method], provenances[method] = analysis, chosen, record
    for note in notes:
        warnings.warn(note, UserWarning, stacklevel=2)
    return AdversarialAnalysis(
        name=name, step=int(step), analyses=analyses, representative=representative, adversarial=x_adv.detach().cpu(),
        source_label=source_label, adversarial_label=adversarial_label, target_class=goal, fooled=fooled,
        provenance=provenances, warnings=notes,
    )


# ----------------------------------------------------------------------------- helpers


def _wrap(model: nn.Module, mean, std, class_names) -> ClassifierWrapper:
    if isinstance(model, ClassifierWrapper):
        if mean is not None or std is not None:
            raise ValueError("the model is a ClassifierWrapper, which normalises itself: leave mean and std None")
        return model
    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be a torch.nn.Module, got {type(model).__name__}")
    if mean is None or std is None:
        raise ValueError("pass mean=... and std=... (the normalisation your model expects, one value per channel; "
                         "mean=(0,)*C, std=(1,)*C if it takes [0, 1] images), or a ClassifierWrapper")
    names = class_names if class_names is not None else getattr(model, "class_names", None)
    wrapper = ClassifierWrapper(model, mean, std, class_names=names)
    return wrapper.to(model_device(model))


def _image_batch(image: Any, what: str, batch: Optional[int] = None) -> torch.Tensor:
    if not isinstance(image, torch.Tensor):
        raise TypeError(f"{what} must be a torch.Tensor image in [0, 1], got {type(image).__name__}")
    x = image.detach().float()
    if x.dim() == 3:
        x = x.unsqueeze(0)
    if x.dim() != 4 or (batch is not None and x.shape[0] != batch):
        want = "(C, H, W) or (1, C, H, W)" if batch == 1 else "(N, C, H, W)"
        raise ValueError(f"{what} has shape {tuple(image.shape)}; expected {want} in [0, 1]")
    return x


def _targets(targets: Any, where: torch.device) -> Optional[torch.Tensor]:
    if targets is None:
        return None
    if isinstance(targets, (list, tuple)):
        if not targets:
            return None
        targets = torch.stack([_image_batch(t, "each target image", 1)[0] for t in targets])
    x = _image_batch(targets, "targets")
    return x.to(where) if len(x) else None


def _target_names(names: Optional[Sequence[str]], n: int) -> List[str]:
    if names is None:
        return [f"target {i + 1}" for i in range(n)] if n > 1 else ["target"] * n
    if len(names) != n:
        raise ValueError(f"{len(names)} target_names for {n} target images: pass one name per image")
    return [str(n) for n in names]


def _class_index(value: Union[int, str], names: Optional[List[str]], num_classes: int) -> int:
    if isinstance(value, str):
        if names is None or value not in names:
            close = [n for n in (names or []) if value.lower() in n.lower()][:5]
            hint = f" (did you mean {', '.join(repr(c) for c in close)}?)" if close else ""
            raise ValueError(f"target_class {value!r} is neither a class index nor a class name of this model{hint}")
        return names.index(value)
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"target_class must be a class index or name, got {type(value).__name__}")
    if not 0 <= value < num_classes:
        raise ValueError(f"target_class {value} is out of range: the model has {num_classes} classes (0..{num_classes - 1})")
    return value


def class_name(names: Optional[Sequence[str]], index: int) -> str:
    """``names[index]``, or ``'class <index>'`` when the model has no class names for it."""
    return names[index] if names is not None and 0 <= index < len(names) else f"class {index}"


def _quoted(names: Optional[Sequence[str]], index: int) -> str:
    return f"'{class_name(names, index)}'"


def _adversarial_scores(model: nn.Module, images: torch.Tensor) -> List[Optional[float]]:
    """Per example the adversarial percentile against the clean images of this analysis (all but the first)."""
    from .adversarial_score import AdversarialScorer

    try:
        scorer = AdversarialScorer(model, images[1:])
    except ValueError:  # e.g. no Linear layer: no penultimate features to score
        return [None] * len(images)
    return [round(float(s), 2) for s in scorer.score(images)]
