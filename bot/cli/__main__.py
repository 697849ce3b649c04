"""`python -m bot.cli`: the `muse` command."""

import sys

from bot.cli.main import main

sys.exit(main())
