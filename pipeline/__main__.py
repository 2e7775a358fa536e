import sys

from amsrepomirror.cli import main

sys.exit(main())
