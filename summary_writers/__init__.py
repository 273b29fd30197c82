"""AEVis summary-writer ops: log datapath analyses for the AEVis TensorBoard dashboard.

>>> from torch.utils.tensorboard import SummaryWriter
>>> from summary_writers import add_analysis
>>> add_analysis(SummaryWriter("runs/demo"), "cat->espresso", analysis, step=0, model=model)
"""

from summary_writers.ops import (
    add_analysis,
    add_arrays,
    add_learned_features,
    add_manifest,
    add_model_graph,
    add_reference_images,
)

__all__ = [
    "add_analysis",
    "add_arrays",
    "add_learned_features",
    "add_manifest",
    "add_model_graph",
    "add_reference_images",
]
