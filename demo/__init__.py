"""Runnable example scripts that use only the public API (installed as tensorboard_plugin_aevis.demos)."""
