import sys

from sink_modifier.cli import main

sys.exit(main())
