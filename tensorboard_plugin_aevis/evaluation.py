"""The paper's quantitative protocol (Sec. 6.1, Table 1; docs/method.md "Evaluation protocol").

For a classifier and a labelled image set:

1. every correctly classified source image is attacked with MI-FGSM; the
   adversarial examples the model misclassifies are kept;
2. for each kept adversarial example, ``n_targets`` normal images of the class it
   fell into (correctly classified ones, from the target pool) are sampled;
3. per method (constrained chain, DGR) the datapaths of the adversarial example, its
   source and all its targets are extracted in ONE batched call;
4. per target: the diff curve (Eq. 9), the diverging-merging test with the last ``r``
   layers (Eq. 10) and the datapath distance to the adversarial example (Eq. 5);
5. top-K score of an example = number of detected patterns among its K targets most
   similar to the adversarial example (similarity 1/dis); averaged per source class and
   overall. Also per method: label preservation, kept fraction and stability
   (Jaccard of the binary datapaths of the same images under another chain order,
   and under perturbed initialisations of the gates).

Work is split by source image: rank ``i`` of ``n`` handles the sources whose index is
``i`` modulo ``n`` and appends one JSON line per finished source to
``<logdir>/rank-<i>/results.jsonl``; sources already recorded there are skipped on
restart. :func:`reduce_results` merges the ranks into ``<logdir>/summary`` (TensorBoard
scalars and a markdown table) and ``<logdir>/results.json``. Every random choice is
seeded from ``(seed, source index)``, so the merged table does not depend on the
number of ranks.

Run with one process (``aevis evaluate``), as independent shards (``aevis evaluate
--shard i/n`` then ``aevis evaluate --reduce-only``) or with torch.distributed
(``torchrun --nproc_per_node=2 -m tensorboard_plugin_aevis.evaluation ...``, gloo on CPU).
"""

from __future__ import annotations

import dataclasses
import glob
import hashlib
import json
import os
import sys
from typing import Any, Callable, Dict, Iterable, List, Optional, Sequence, Tuple

import numpy as np
import torch
from torch import nn

from .analysis import Analysis

RESULTS_FILE = "results.jsonl"
SUMMARY_RUN = "summary"
TOP_K = (1, 3, 5)


class EvaluationError(ValueError):
    """The evaluation cannot run on this input; the message names the problem and the fix."""


# ----------------------------------------------------------------------------- inputs


@dataclasses.dataclass
class EvalData:
    """Images the protocol uses, all ``(N, C, H, W)`` float32 in [0, 1].

    ``source_images`` / ``source_labels`` (S,): images to attack and their true labels;
    ``pool_images`` / ``pool_labels`` (P,): where the normal target images are drawn from
    (only the correctly classified ones are used); ``class_names`` (K,) name the labels.
    """

    name: str
    source_images: torch.Tensor
    source_labels: torch.Tensor
    pool_images: torch.Tensor
    pool_labels: torch.Tensor
    class_names: List[str]
    source_names: List[str]

    def validate(self) -> None:
        for what, images, labels in (("source", self.source_images, self.source_labels),
                                     ("pool", self.pool_images, self.pool_labels)):
            if images.dim() != 4 or images.shape[0] != labels.shape[0]:
                raise EvaluationError(f"{what} images {tuple(images.shape)} and labels {tuple(labels.shape)} do not match: "
                                      "need (N, C, H, W) images and N labels")
            if images.shape[0] == 0:
                raise EvaluationError(f"the dataset {self.name!r} has no {what} images; point it at a folder with images")
        if len(self.source_names) != len(self.source_labels):
            raise EvaluationError("one name per source image is needed")
        classes = set(self.source_labels.tolist()) | set(self.pool_labels.tolist())
        if len(classes) < 2:
            only = self.class_names[next(iter(classes))] if classes else "none"
            raise EvaluationError(f"the dataset {self.name!r} has one class ({only}); the protocol needs images of at least "
                                  "two classes: the adversarial examples must fall into a class that has normal images")


@dataclasses.dataclass
class EvalConfig:
    """Settings of one evaluation. ``r=None`` means ``min(8, L - 1)`` for L gated layers."""

    n_targets: int = 20
    methods: Tuple[str, ...] = ("constrained", "dgr")
    r: Optional[int] = None
    top_k: Tuple[int, ...] = TOP_K
    eps: float = 16 / 255
    attack_steps: int = 10
    mu: float = 1.0
    targeted: bool = False
    seed: int = 0
    stability_every: int = 10  # stability (chain order, init) is measured on every k-th source (0: never)
    init_noise: float = 0.5  # perturbed starts for the init stability: gates start at 1 - init_noise * U(0, 1)
    init_seeds: int = 2  # perturbed runs per method and stability source
    layers: Any = "auto"
    extraction_params: Dict[str, Dict[str, Any]] = dataclasses.field(default_factory=dict)
    max_sources: Optional[int] = None

    def extraction_options(self) -> Dict[str, Dict[str, Any]]:
        """Per method of ``methods``, every option its extraction runs with: ``extraction_params`` over the
        method's defaults (``ExtractionOptions`` fields by name).

        Raises:
            ValueError / TypeError: an unknown method or an invalid option.
        """
        from .extraction.methods import method_named
        from .extraction.options import options_from

        return {method: dataclasses.asdict(options_from(None, self.extraction_params.get(method, {}))
                                           .with_defaults(method_named(method).defaults))
                for method in self.methods}

    def fingerprint(self, data_name: str) -> str:
        """Short hash of everything that changes the per-source results: the settings, with the methods'
        effective options (:meth:`extraction_options`) in place of ``extraction_params``, so results made
        under another engine default do not match."""
        fields = dataclasses.asdict(self)
        del fields["extraction_params"]
        fields["extraction_options"] = self.extraction_options()
        fields["data"] = data_name
        return hashlib.sha256(json.dumps(fields, sort_keys=True, default=str).encode()).hexdigest()[:16]


# ----------------------------------------------------------------------------- scores


def top_k_counts(distances: Sequence[float], detected: Sequence[bool], ks: Iterable[int] = TOP_K) -> Dict[int, int]:
    """Detected patterns among the K targets nearest to the adversarial example, per K.

    ``distances`` (T,): datapath distance of each target to the adversarial example;
    ``detected`` (T,): whether its triplet shows a diverging-merging pattern. Nearest
    first (similarity ``1 / dis``); ties keep the target order. With fewer than K
    targets all of them count.
    """
    distances = np.asarray(distances, dtype=np.float64)
    detected = np.asarray(detected, dtype=bool)
    if distances.shape != detected.shape or distances.ndim != 1:
        raise ValueError(f"distances {distances.shape} and detected {detected.shape} must be 1-D and equally long")
    order = np.argsort(distances, kind="stable")
    return {int(k): int(detected[order[:k]].sum()) for k in ks}


def jaccard(a: np.ndarray, b: np.ndarray) -> float:
    """|a & b| / |a | b| of two boolean arrays (1.0 when both are empty)."""
    a, b = np.asarray(a, bool), np.asarray(b, bool)
    union = np.logical_or(a, b).sum()
    return 1.0 if union == 0 else float(np.logical_and(a, b).sum() / union)


def resolve_r(r: Optional[int], num_layers: int) -> int:
    """The pattern length: ``r`` or ``min(8, L - 1)``; Eq. 10 compares layer i with i - 1, so r <= L - 1."""
    if r is None:
        r = min(8, num_layers - 1)
    if not isinstance(r, int) or r < 1:
        raise EvaluationError(f"r must be a positive integer (the number of final layers whose diff must increase); got {r!r}")
    if r > num_layers - 1:
        raise EvaluationError(f"r={r} is larger than this model allows: it has {num_layers} gated layers and Eq. 10 compares "
                              f"each of the last r layers with the one before, so r <= {num_layers - 1}; pass --r {num_layers - 1} "
                              "or less, or gate more layers")
    return r


# ----------------------------------------------------------------------------- one source


def _rng(seed: int, index: int, purpose: int) -> np.random.Generator:
    return np.random.default_rng([seed, index, purpose])


@torch.no_grad()
def predict_labels(model: nn.Module, images: torch.Tensor, batch_size: int = 64, device: str = "cpu") -> torch.Tensor:
    """Predicted labels ``(N,)`` of images ``(N, C, H, W)`` in [0, 1], in fixed-size batches."""
    out = [model(images[i:i + batch_size].to(device)).argmax(1).cpu() for i in range(0, len(images), batch_size)]
    return torch.cat(out) if out else torch.zeros(0, dtype=torch.long)


def attack_source(model: nn.Module, image: torch.Tensor, label: int, target: Optional[int], config: EvalConfig,
                  device: str = "cpu") -> Tuple[torch.Tensor, int]:
    """MI-FGSM on one source ``(C, H, W)``: ``(adversarial (C, H, W), its predicted label)``."""
    from .attacks import mi_fgsm

    x = image.unsqueeze(0).to(device)
    kwargs = dict(eps=config.eps, steps=config.attack_steps, mu=config.mu)
    if target is None:
        adv = mi_fgsm(model, x, label=torch.tensor([label], device=device), **kwargs)
    else:
        adv = mi_fgsm(model, x, target=torch.tensor([target], device=device), **kwargs)
    with torch.no_grad():
        return adv[0].cpu(), int(model(adv).argmax(1))


def _flat_binary(analysis: Analysis) -> np.ndarray:
    """(N, sum_l C_l) binary datapaths of all layers side by side."""
    return np.concatenate(analysis.binary(), axis=1)


def score_analysis(analysis: Analysis, r: int, ks: Sequence[int]) -> Dict[str, Any]:
    """Per-target results of one batched analysis (example 0 adversarial, 1 source, 2.. targets)."""
    from .datapath_metrics import datapath_distance, detect_diverging_merging, diff_curve

    targets = analysis.indices("target")
    widths = np.sqrt([layer.channels for layer in analysis.layers])
    distances, detected, curves, curves_rms = [], [], [], []
    for t in targets:
        diff = diff_curve(analysis, 0, 1, t)
        curves.append([float(v) for v in diff])
        curves_rms.append([float(v) for v in diff / widths])
        detected.append(bool(detect_diverging_merging(diff, r).detected))
        distances.append(float(datapath_distance(analysis, 0, t)))
    return {
        "distances": distances,
        "detected": detected,
        "diff_curves": curves,
        "diff_curves_rms": curves_rms,  # each layer's distances divided by sqrt(C_l): a width-normalised Eq. 9
        "top_k": {str(k): v for k, v in top_k_counts(distances, detected, ks).items()},
        "label_preserved": [bool(e.label_preserved) for e in analysis.examples],
        "kept_fraction": [float(v) for v in analysis.kept_fraction()],
        "params": {k: analysis.params[k] for k in ("steps", "lr", "lambda", "gamma", "threshold", "clamp", "warmup", "multiplicative")
                   if k in analysis.params},
    }


def mean_jaccard(a: np.ndarray, b: np.ndarray) -> float:
    """Mean over images of the Jaccard of two sets of binary datapaths ``(N, G)``."""
    return float(np.mean([jaccard(x, y) for x, y in zip(a, b)]))


def _order_stability(model: nn.Module, images: torch.Tensor, roles: List[str], method: str, reference: Analysis,
                     extract: Callable[..., Analysis]) -> float:
    """Mean Jaccard of each image's binary datapath between the default chain (adversarial,
    source, targets) and the chain that starts with the source (source, adversarial, targets)."""
    swapped = extract(model, images, roles, method, order=["source", "adversarial", "target"])
    return mean_jaccard(_flat_binary(reference), _flat_binary(swapped))


def init_seeds(seed: int, index: int, count: int) -> List[int]:
    """The ``count`` seeds of the perturbed starts of source ``index`` (the same on every rank)."""
    return [int(v) for v in _rng(seed, index, 3).integers(0, 2**31 - 1, size=count)]


def _init_stability(model: nn.Module, images: torch.Tensor, roles: List[str], method: str, reference: Analysis,
                    extract: Callable[..., Analysis], noise: float, seeds: Sequence[int]) -> float:
    """Mean Jaccard of the binary datapaths over every pair of runs among the default start
    (all gates 1) and one run per seed starting at ``1 - noise * U(0, 1)``."""
    runs = [_flat_binary(reference)] + [_flat_binary(extract(model, images, roles, method, init_noise=noise, seed=s))
                                        for s in seeds]
    return float(np.mean([mean_jaccard(runs[i], runs[j]) for i in range(len(runs)) for j in range(i + 1, len(runs))]))


def evaluate_source(model: nn.Module, data: EvalData, pool_correct: torch.Tensor, index: int, config: EvalConfig, r: int,
                    extract: Callable[..., Analysis], device: str = "cpu") -> Dict[str, Any]:
    """Attack source ``index``, pick its targets, extract and score; returns its JSON record."""
    label = int(data.source_labels[index])
    record: Dict[str, Any] = {"index": index, "name": data.source_names[index], "source_label": label}
    target_class = None
    if config.targeted:
        classes = sorted(set(data.pool_labels[pool_correct].tolist()) - {label})
        if not classes:
            record["status"] = "no_targets"
            return record
        target_class = int(_rng(config.seed, index, 1).choice(classes))
    adversarial, adv_label = attack_source(model, data.source_images[index], label, target_class, config, device)
    record["adversarial_label"] = adv_label
    if adv_label == label:
        record["status"] = "not_fooled"
        return record
    candidates = torch.nonzero(pool_correct & (data.pool_labels == adv_label)).flatten().numpy()
    if len(candidates) == 0:
        record["status"] = "no_targets"
        return record
    chosen = _rng(config.seed, index, 2).choice(candidates, min(config.n_targets, len(candidates)), replace=False)
    chosen = np.sort(chosen)
    record["target_indices"] = [int(i) for i in chosen]
    images = torch.cat([adversarial.unsqueeze(0), data.source_images[index:index + 1], data.pool_images[torch.as_tensor(chosen)]])
    roles = ["adversarial", "source"] + ["target"] * len(chosen)
    record["methods"] = {}
    measure_stability = config.stability_every > 0 and index % config.stability_every == 0
    for method in config.methods:
        analysis = extract(model, images, roles, method)
        result = score_analysis(analysis, r, config.top_k)
        if measure_stability and method == "constrained":  # DGR has no chain: its order cannot matter
            result["stability_order"] = _order_stability(model, images, roles, method, analysis, extract)
        if measure_stability and config.init_seeds > 0:
            seeds = init_seeds(config.seed, index, config.init_seeds)
            result["stability_init"] = _init_stability(model, images, roles, method, analysis, extract, config.init_noise, seeds)
        record["methods"][method] = result
    record["status"] = "done"
    return record


# ----------------------------------------------------------------------------- runs


def _read_jsonl(path: str) -> List[Dict[str, Any]]:
    """Records of a results file; a torn last line (crash while writing) is ignored."""
    records = []
    if not os.path.exists(path):
        return records
    with open(path, encoding="utf-8") as f:
        lines = f.read().split("\n")
    for number, line in enumerate(lines):
        if not line.strip():
            continue
        try:
            records.append(json.loads(line))
        except json.JSONDecodeError:
            if number == len(lines) - 1 or not any(l.strip() for l in lines[number + 1:]):
                continue  # the line being written when the process died
            raise EvaluationError(f"{path} line {number + 1} is not JSON; delete the file to start that rank again")
    return records


def run_shard(model: nn.Module, data: EvalData, config: EvalConfig, logdir: str, rank: int = 0, world_size: int = 1,
              extract: Optional[Callable[..., Analysis]] = None, device: str = "cpu", progress: bool = True) -> str:
    """Evaluate the sources of shard ``rank`` of ``world_size``; returns its results file.

    Appends one JSON line per source to ``<logdir>/rank-<rank>/results.jsonl`` (the first
    line holds the settings); sources already recorded there are skipped.
    """
    data.validate()
    if not 0 <= rank < world_size:
        raise EvaluationError(f"shard {rank}/{world_size} does not exist: use --shard i/n with 0 <= i < n")
    if config.n_targets < 1:
        raise EvaluationError(f"n_targets must be at least 1, got {config.n_targets}")
    if config.init_seeds < 0 or (config.init_seeds > 0 and not 0 < config.init_noise < 1):
        raise EvaluationError(f"init stability needs init_seeds >= 0 and 0 < init_noise < 1 (gates start at 1 - init_noise * U(0, 1)); "
                              f"got init_seeds={config.init_seeds}, init_noise={config.init_noise}; use --init-seeds 0 to skip it")
    extract = extract or make_extractor(config, data.class_names, device)
    model = model.to(device).eval()
    num_layers = _num_layers(model, data.source_images[:1].to(device), config.layers)
    r = resolve_r(config.r, num_layers)
    fingerprint = config.fingerprint(data.name)
    run_dir = os.path.join(logdir, f"rank-{rank}")
    os.makedirs(run_dir, exist_ok=True)
    path = os.path.join(run_dir, RESULTS_FILE)
    existing = _read_jsonl(path)
    _drop_torn_tail(path)
    if existing and existing[0].get("fingerprint") != fingerprint:
        raise EvaluationError(f"{path} holds results made with other settings; pass a new --logdir (or delete {run_dir}) "
                              "to evaluate with these settings")
    done = {rec["index"] for rec in existing if "index" in rec}
    header = {"fingerprint": fingerprint, "config": dataclasses.asdict(config), "data": data.name, "r": r,
              "num_layers": num_layers, "rank": rank, "world_size": world_size, "class_names": list(data.class_names)}
    pool_pred = predict_labels(model, data.pool_images, device=device)
    pool_correct = pool_pred == data.pool_labels
    source_pred = predict_labels(model, data.source_images, device=device)
    sources = [i for i in range(len(data.source_labels)) if int(source_pred[i]) == int(data.source_labels[i])]
    if config.max_sources is not None:
        sources = sources[:config.max_sources]
    mine = [i for i in sources if i % world_size == rank and i not in done]
    bar = None
    if progress:
        from tqdm import tqdm
        bar = tqdm(total=len(mine), desc=f"evaluate rank {rank}", unit="source", file=sys.stderr)
    with open(path, "a", encoding="utf-8") as f:
        if not existing:
            _append(f, header)
        for index in mine:
            _append(f, evaluate_source(model, data, pool_correct, index, config, r, extract, device))
            if bar is not None:
                bar.update(1)
    if bar is not None:
        bar.close()
    return path


def _drop_torn_tail(path: str) -> None:
    """Cut a half-written last line (the process died while writing it) so appends stay valid JSON lines."""
    if not os.path.exists(path):
        return
    with open(path, "rb+") as f:
        data = f.read()
        if data and not data.endswith(b"\n"):
            f.truncate(data.rfind(b"\n") + 1)


def _append(f, record: Dict[str, Any]) -> None:
    f.write(json.dumps(record) + "\n")
    f.flush()
    os.fsync(f.fileno())


def _num_layers(model: nn.Module, example: torch.Tensor, layers: Any) -> int:
    from .gating import select_layers

    return len(select_layers(model, example, layers))


def make_extractor(config: EvalConfig, class_names: Sequence[str], device: str = "cpu") -> Callable[..., Analysis]:
    """``extract(model, images, roles, method, **extra) -> Analysis`` with the configured layers and parameters."""
    from .extraction import extract_datapaths

    def extract(model: nn.Module, images: torch.Tensor, roles: List[str], method: str, **extra: Any) -> Analysis:
        params = dict(config.extraction_params.get(method, {}))
        params.update(extra)
        return extract_datapaths(model, images, roles, method=method, layers=config.layers, class_names=list(class_names),
                                 device=device, progress=False, **params)

    return extract


# ----------------------------------------------------------------------------- reduce


def load_records(logdir: str) -> Tuple[Dict[str, Any], List[Dict[str, Any]]]:
    """(header, per-source records) of all ranks under ``logdir``, de-duplicated by source index."""
    paths = sorted(glob.glob(os.path.join(logdir, "rank-*", RESULTS_FILE)))
    if not paths:
        raise EvaluationError(f"no {RESULTS_FILE} under {logdir}/rank-*; run `aevis evaluate` with this --logdir first")
    header, by_index = None, {}
    for path in paths:
        records = _read_jsonl(path)
        if not records:
            continue
        if header is None:
            header = records[0]
        elif records[0].get("fingerprint") != header.get("fingerprint"):
            raise EvaluationError(f"{path} was made with other settings than {paths[0]}; keep one evaluation per --logdir")
        for rec in records[1:]:
            by_index[rec["index"]] = rec
    if header is None:
        raise EvaluationError(f"the results files under {logdir} are empty; run `aevis evaluate` with this --logdir")
    return header, [by_index[i] for i in sorted(by_index)]


def _detections(rows: List[Dict[str, Any]], r: int, curves: str = "diff_curves") -> List[List[bool]]:
    """Per source row, per target: a diverging-merging pattern of length ``r`` in its diff curve
    (``curves``: ``"diff_curves"``, Eq. 9, or ``"diff_curves_rms"``, Eq. 9 with L2 / sqrt(C_l))."""
    from .datapath_metrics import detect_diverging_merging

    return [[bool(detect_diverging_merging(np.asarray(c), r).detected) for c in row[curves]] for row in rows]


def _method_scores(rows: List[Dict[str, Any]], r: int, ks: Sequence[int], curves: str = "diff_curves") -> List[Dict[int, int]]:
    """Top-K counts of each source's result row, with patterns detected at length ``r`` in ``curves``."""
    return [top_k_counts(row["distances"], det, ks) for row, det in zip(rows, _detections(rows, r, curves))]


def summarize(header: Dict[str, Any], records: List[Dict[str, Any]], extra_r: Sequence[int] = ()) -> Dict[str, Any]:
    """The Table 1 numbers from per-source records (see the module docstring).

    Patterns are re-detected from the stored diff curves, with the run's ``r`` and, as a
    sensitivity check, with each of ``extra_r`` and with the width-normalised curves
    (key ``"<r> (L2/sqrt(C_l))"``, when every record has them; top-K only).
    """
    config = header["config"]
    class_names = header["class_names"]
    ks = [int(k) for k in config["top_k"]]
    done = [rec for rec in records if rec["status"] == "done"]
    counts = {"sources": len(records), "misclassified": sum(rec["status"] != "not_fooled" for rec in records),
              "not_fooled": sum(rec["status"] == "not_fooled" for rec in records),
              "no_targets": sum(rec["status"] == "no_targets" for rec in records), "evaluated": len(done),
              "triplets": sum(len(rec["target_indices"]) for rec in done)}
    if not done:
        why = ("none of the adversarial examples was misclassified; raise --eps or --attack-steps"
               if counts["misclassified"] == 0 else
               "no misclassified example has a correctly classified normal image of the class it fell into; use more images per class")
        raise EvaluationError(f"nothing to score among {len(records)} attacked sources: {why}")
    r = header["r"]
    methods: Dict[str, Any] = {}
    sensitivity: Dict[str, Any] = {}
    for method in config["methods"]:
        rows = [rec["methods"][method] for rec in done]
        scores = _method_scores(rows, r, ks)
        by_class: Dict[str, Dict[str, float]] = {}
        for c in sorted({rec["source_label"] for rec in done}):
            mine = [sc for sc, rec in zip(scores, done) if rec["source_label"] == c]
            by_class[class_names[c]] = {str(k): float(np.mean([sc[k] for sc in mine])) for k in ks}
            by_class[class_names[c]]["n"] = len(mine)
        preserved = np.concatenate([row["label_preserved"] for row in rows])
        stability = [row["stability_order"] for row in rows if "stability_order" in row]
        stability_init = [row["stability_init"] for row in rows if "stability_init" in row]
        methods[method] = {
            "top_k": {str(k): float(np.mean([sc[k] for sc in scores])) for k in ks},
            "by_class": by_class,
            "label_preservation": float(preserved.mean()),
            "examples_all_preserved": float(np.mean([all(row["label_preserved"]) for row in rows])),
            "kept_fraction": float(np.mean(np.concatenate([row["kept_fraction"] for row in rows]))),
            "examples_with_a_pattern": float(np.mean([any(det) for det in _detections(rows, r)])),
            "stability_order": float(np.mean(stability)) if stability else None,
            "stability_examples": len(stability),
            "stability_init": float(np.mean(stability_init)) if stability_init else None,
            "stability_init_examples": len(stability_init),
        }
        for extra in extra_r:
            if extra == r or not 1 <= extra < header["num_layers"]:
                continue
            other = _method_scores(rows, extra, ks)
            sensitivity.setdefault(str(extra), {})[method] = {str(k): float(np.mean([sc[k] for sc in other])) for k in ks}
        if all("diff_curves_rms" in row for row in rows):
            normalised = _method_scores(rows, r, ks, "diff_curves_rms")
            sensitivity.setdefault(f"{r} (L2/sqrt(C_l))", {})[method] = {str(k): float(np.mean([sc[k] for sc in normalised])) for k in ks}
    return {"data": header["data"], "r": r, "num_layers": header["num_layers"], "config": config,
            "counts": counts, "methods": methods, "r_sensitivity": sensitivity}


def markdown_table(summary: Dict[str, Any]) -> str:
    """The summary as markdown: top-K per class and overall, then the per-method checks."""
    methods = list(summary["methods"])
    first = summary["methods"][methods[0]]
    ks = list(first["top_k"])
    classes = list(first["by_class"])
    lines = ["| score | method | " + " | ".join(f"{c} (n={first['by_class'][c]['n']})" for c in classes) + " | all |",
             "|---|---|" + "---:|" * (len(classes) + 1)]
    for k in ks:
        for m in methods:
            row = summary["methods"][m]
            cells = [f"{row['by_class'][c][k]:.3f}" for c in classes] + [f"**{row['top_k'][k]:.3f}**"]
            lines.append(f"| top-{k} | {m} | " + " | ".join(cells) + " |")
    lines += ["", "| method | label preservation (images) | examples fully preserved | kept fraction "
              "| examples with a pattern (any target) | stability: chain order (Jaccard) | stability: perturbed init (Jaccard) |",
              "|---|---:|---:|---:|---:|---:|---:|"]
    for m in methods:
        row = summary["methods"][m]
        stab = ("n/a (no chain)" if m == "dgr" else "not measured") if row["stability_order"] is None else f"{row['stability_order']:.3f} (n={row['stability_examples']})"
        init = "not measured" if row.get("stability_init") is None else f"{row['stability_init']:.3f} (n={row['stability_init_examples']})"
        lines.append(f"| {m} | {row['label_preservation']:.3f} | {row['examples_all_preserved']:.3f} | {row['kept_fraction']:.3f} "
                     f"| {row['examples_with_a_pattern']:.3f} | {stab} | {init} |")
    if summary.get("r_sensitivity"):
        lines += ["", "| r (sensitivity) | method | " + " | ".join(f"top-{k}" for k in ks) + " |", "|---|---|" + "---:|" * len(ks)]
        for extra, per in summary["r_sensitivity"].items():
            for m, top in per.items():
                lines.append(f"| {extra} | {m} | " + " | ".join(f"{top[k]:.3f}" for k in ks) + " |")
    c = summary["counts"]
    lines += ["", f"{c['sources']} sources attacked, {c['misclassified']} misclassified, {c['evaluated']} evaluated "
              f"({c['triplets']} triplets; {c['no_targets']} without target images); r = {summary['r']} of "
              f"{summary['num_layers']} gated layers."]
    options = summary["config"].get("extraction_params") or {}
    if options:
        lines.append("Extraction options: " + "; ".join(f"{m}: " + ", ".join(f"{k}={v}" for k, v in sorted(o.items()))
                                                      for m, o in sorted(options.items())) + ".")
    return "\n".join(lines)


def write_summary(logdir: str, summary: Dict[str, Any]) -> str:
    """Log the summary to ``<logdir>/summary`` (scalars + markdown text) and ``<logdir>/results.json``."""
    from torch.utils.tensorboard import SummaryWriter

    with SummaryWriter(os.path.join(logdir, SUMMARY_RUN)) as writer:
        for m, row in summary["methods"].items():
            for k, v in row["top_k"].items():
                writer.add_scalar(f"evaluation/{m}/top_{k}", v, 0)
                for c, cls in row["by_class"].items():
                    writer.add_scalar(f"evaluation_by_class/{m}/top_{k}/{c}", cls[k], 0)
            for key in ("label_preservation", "kept_fraction", "examples_with_a_pattern", "stability_order", "stability_init"):
                if row[key] is not None:
                    writer.add_scalar(f"evaluation/{m}/{key}", row[key], 0)
        writer.add_text("evaluation/table", markdown_table(summary), 0)
    path = os.path.join(logdir, "results.json")
    with open(path, "w", encoding="utf-8") as f:
        json.dump(summary, f, indent=2)
    return path


def reduce_results(logdir: str, extra_r: Sequence[int] = ()) -> Dict[str, Any]:
    """Merge every rank under ``logdir``, log the table, return the summary dict."""
    header, records = load_records(logdir)
    summary = summarize(header, records, extra_r)
    write_summary(logdir, summary)
    return summary


# ----------------------------------------------------------------------------- distributed


def distributed_context() -> Tuple[int, int, bool]:
    """``(rank, world_size, initialised_here)`` from torchrun's environment (gloo), or (0, 1, False)."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return 0, 1, False
    import torch.distributed as dist

    if not dist.is_initialized():
        dist.init_process_group("gloo")
        return dist.get_rank(), dist.get_world_size(), True
    return dist.get_rank(), dist.get_world_size(), False


if __name__ == "__main__":  # torchrun --nproc_per_node=2 -m tensorboard_plugin_aevis.evaluation <aevis evaluate options>
    from .cli import main

    sys.exit(main(["evaluate", *sys.argv[1:]]))
