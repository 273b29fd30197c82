"""AEVis for TensorBoard: datapaths of adversarial examples, logged and served in TensorBoard.

The main functions, importable from the package root (loaded on first use, so that
TensorBoard importing the plugin does not import torch):

- ``analyze_adversarial(writer, model, source, target_class, targets, step=...)``: attack,
  extract both methods, pick the representative target and log (``adversarial_analysis``).
- ``load_analyses(logdir)``: read logged analyses back in a notebook (``notebook``).
- ``add_analysis``: log an ``Analysis`` you extracted yourself (``summary_writers``).
- ``extract_datapaths``, ``Analysis``, ``ClassifierWrapper``, ``load_model``,
  ``mi_fgsm`` / ``pgd`` / ``fgsm``, ``representative_target``, ``diff_curve``,
  ``detect_diverging_merging``, ``AdversarialScorer``, ``feature_map_contributions``.
"""

import importlib

__version__ = "0.1.0"

# public name -> module that defines it
_EXPORTS = {
    "analyze_adversarial": "tensorboard_plugin_aevis.adversarial_analysis",
    "AdversarialAnalysis": "tensorboard_plugin_aevis.adversarial_analysis",
    "load_analyses": "tensorboard_plugin_aevis.notebook",
    "add_analysis": "summary_writers",
    "extract_datapaths": "tensorboard_plugin_aevis.extraction",
    "Analysis": "tensorboard_plugin_aevis.analysis",
    "ClassifierWrapper": "tensorboard_plugin_aevis.models",
    "load_model": "tensorboard_plugin_aevis.models",
    "mi_fgsm": "tensorboard_plugin_aevis.attacks",
    "pgd": "tensorboard_plugin_aevis.attacks",
    "fgsm": "tensorboard_plugin_aevis.attacks",
    "representative_target": "tensorboard_plugin_aevis.datapath_metrics",
    "diff_curve": "tensorboard_plugin_aevis.datapath_metrics",
    "detect_diverging_merging": "tensorboard_plugin_aevis.datapath_metrics",
    "AdversarialScorer": "tensorboard_plugin_aevis.adversarial_score",
    "feature_map_contributions": "tensorboard_plugin_aevis.contribution",
}

__all__ = ["__version__", *_EXPORTS]


def __getattr__(name: str):
    if name not in _EXPORTS:
        raise AttributeError(f"module 'tensorboard_plugin_aevis' has no attribute {name!r}")
    value = getattr(importlib.import_module(_EXPORTS[name]), name)
    globals()[name] = value  # later lookups skip __getattr__
    return value


def __dir__():
    return sorted([*globals(), *_EXPORTS])
