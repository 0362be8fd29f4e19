"""``python -m tqstar.cli``: the ``tqstar`` command."""

import sys

from . import main

sys.exit(main())
