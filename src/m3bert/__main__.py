import sys

from m3bert.cli import main

sys.exit(main())
