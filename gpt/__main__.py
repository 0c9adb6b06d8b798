"""`python -m gpt ...`: the command line (see `gpt/cli.py`)."""

import sys

from gpt.cli import main

sys.exit(main())
