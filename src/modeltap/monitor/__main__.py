"""`python -m modeltap.monitor --run-dir DIR --key KEY`: started by a serving process.

The server's lock is taken before anything heavy is imported, so serving processes that look
for a monitor see this one (starting) within milliseconds and do not start another.
"""

from __future__ import annotations

import argparse
import fcntl
import logging
import os
import sys
from pathlib import Path


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m modeltap.monitor")
    parser.add_argument("--run-dir", required=True)
    parser.add_argument("--key", required=True)
    args = parser.parse_args(argv)
    from modeltap.handoff.rendezvous import RendezvousError, check_run_directory

    try:
        # The tap checked it; so does the monitor, which reads its configuration from it.
        check_run_directory(Path(args.run_dir))
    except RendezvousError as exc:
        print(f"modeltap monitor: {exc}", file=sys.stderr)
        return 1
    lock = os.open(Path(args.run_dir) / f"{args.key}.lock", os.O_CREAT | os.O_RDWR, 0o600)
    try:
        fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        return 0  # another monitor serves this server
    logging.basicConfig(level=logging.INFO, format="%(levelname)s:     %(message)s")

    from modeltap.handoff.rendezvous import Rendezvous
    from modeltap.monitor.process import Monitor

    place = Rendezvous(Path(args.run_dir), args.key)
    try:
        document = place.read_config()
    except (OSError, ValueError) as exc:
        print(f"modeltap monitor: cannot read its configuration: {exc}", file=sys.stderr)
        return 1
    return Monitor(place, document, lock_fd=lock).run()


if __name__ == "__main__":
    sys.exit(main())
