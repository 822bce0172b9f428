import sys

from lakeferry.cli import main

sys.exit(main())
