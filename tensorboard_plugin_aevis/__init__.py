"""AEVis for TensorBoard: datapaths of adversarial examples, logged and served in TensorBoard.

Public API (stable names a training script imports):

- ``tensorboard_plugin_aevis.analysis.Analysis``: the result object of one datapath analysis.
"""

__version__ = "0.1.0"
