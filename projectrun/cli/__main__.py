"""``python -m projectrun.cli``."""
import sys

from projectrun.cli import main

sys.exit(main())
