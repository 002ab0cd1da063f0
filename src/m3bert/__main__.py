import sys

from m3bert.app.cli import main

sys.exit(main())
