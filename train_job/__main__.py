"""``python -m train_job``: see train_job/cli.py for the commands and exit codes."""

import sys

from train_job.cli import main

sys.exit(main())
