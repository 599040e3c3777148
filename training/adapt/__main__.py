"""`python -m training.adapt`: see training.adapt.cli."""

import sys

from training.adapt.cli import main

sys.exit(main())
