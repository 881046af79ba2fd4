"""What every ``workflow_scripts/*.py`` shares: logging to stderr and one-line input errors.

A script is ``def main(argv=None)`` (argparse reads ``sys.argv`` when ``argv`` is None) and
ends with ``if __name__ == "__main__": run_cli(main)``. Rules redirect stderr into their
``log:`` file, so everything a script reports lands there.
"""

from __future__ import annotations

import logging
import sys
from collections.abc import Callable

from rmi.errors import InputError

LOG_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"


def run_cli(main: Callable[[list[str] | None], None]) -> None:
    """Set up logging (INFO, stderr) and call ``main(None)``.

    A ``rmi.errors.InputError`` (bad user input: a missing or corrupt file, a checksum
    mismatch...) is printed as one line ``error: <where>: <problem>`` on stderr and the process
    exits with status 1; any other exception is a bug and keeps its traceback.
    """
    logging.basicConfig(level=logging.INFO, format=LOG_FORMAT, stream=sys.stderr)
    logging.captureWarnings(True)
    try:
        main(None)
    except InputError as err:
        print(f"error: {err}", file=sys.stderr, flush=True)
        sys.exit(1)
