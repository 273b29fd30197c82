"""``python -m tensorboard_plugin_aevis`` is the ``aevis`` command."""

import sys

from tensorboard_plugin_aevis.cli import main

sys.exit(main())
