"""``python -m teachcam.edge.cli``: the same as the ``teachcam`` command."""

import sys

from teachcam.edge.cli import main

sys.exit(main())
