"""AEVis summary-writer ops: log datapath analyses for the AEVis TensorBoard dashboard.

>>> from torch.utils.tensorboard import SummaryWriter
>>> from summary_writers import add_analysis
>>> add_analysis(SummaryWriter("runs/demo"), "cat->espresso", analysis, step=0, model=model)
"""

__all__ = [
    "add_analysis",
    "add_arrays",
    "add_learned_features",
    "add_manifest",
    "add_model_graph",
    "add_reference_images",
]


def __getattr__(name):
    """The ``add_*`` ops, imported on first use: reading a run (``summary_writers.codec``,
    as TensorBoard's plugin does) must not import torch."""
    if name in __all__:
        from summary_writers import ops

        return getattr(ops, name)
    raise AttributeError(f"module 'summary_writers' has no attribute {name!r}")
