import sys

from augreg_nb.cli import main

sys.exit(main())
