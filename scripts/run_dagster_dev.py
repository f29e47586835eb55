#!/usr/bin/env python3
"""Runs a command (normally `dagster dev ...`) in its own session with SIGINT and SIGTERM reset.

Why: a process started in the background (`cmd &`) by a non-interactive shell inherits "ignore
SIGINT", and `dagster dev` copies that disposition onto SIGTERM as well, so it can then be stopped
neither by Ctrl-C nor by `kill`. This wrapper restores the default handlers, starts a new session
(so that the caller can stop the whole process group with one `kill -- -PID`, and a terminal's
Ctrl-C reaches it only through the caller's trap), then replaces itself with the command.

Usage: run_dagster_dev.py COMMAND [ARGS...]
"""

from __future__ import annotations

import os
import signal
import sys


def main(argv: list[str]) -> int:
    if not argv:
        print("usage: run_dagster_dev.py COMMAND [ARGS...]", file=sys.stderr)
        return 2
    signal.signal(signal.SIGINT, signal.SIG_DFL)
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    try:
        os.setsid()
    except PermissionError:
        # Already a session leader (e.g. started through `setsid`): nothing to do.
        pass
    try:
        os.execvp(argv[0], argv)
    except FileNotFoundError:
        print(f"run_dagster_dev.py: command not found: {argv[0]}", file=sys.stderr)
        return 127
    return 0  # not reached: execvp replaces this process


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
