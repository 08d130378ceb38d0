import sys

from streamforge_ops.cli import main

sys.exit(main())
