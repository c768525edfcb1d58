"""``python -m projectrun``."""
import sys

from projectrun.cli import main

sys.exit(main())
