"""Server-side geometry of the dashboard: the layer-level treemap and the network-level river.

Both are pure functions of numbers (no TensorBoard, no torch); the plugin caches them.
"""
