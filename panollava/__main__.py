"""python -m panollava → panollava-cli."""
import sys

from panollava.cli import main

sys.exit(main())
