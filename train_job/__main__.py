"""``python -m train_job``: see train_job/cli.py for the commands and exit codes."""

import sys

from ouro.cpu_threads import configure_cpu_threads

configure_cpu_threads()  # before anything imports torch (threads: --cpu-threads, default 1)

from train_job.cli import main  # noqa: E402 - after the CPU thread settings

sys.exit(main())
