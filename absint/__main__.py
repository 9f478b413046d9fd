"""``python -m absint``: the ``absint`` command line (:func:`absint.cli.main`)."""
import sys

from absint.cli import main

sys.exit(main())
