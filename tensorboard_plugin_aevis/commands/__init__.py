"""Sub-commands of the ``aevis`` CLI, one module each."""
