"""The `streamforge` command line.

Each subcommand lives in its own module under `streamforge_ops.commands` and
exposes `register(subparsers)`; `register` adds a parser whose `func`
default is called with the parsed arguments and returns the exit code.
"""

from __future__ import annotations

import argparse
import importlib
import os
import sys
import threading
from collections.abc import Sequence
from typing import NoReturn

# Module names under streamforge_ops.commands, in --help order.
COMMANDS = ("run", "checkpoint", "savepoint", "restore", "state", "dlq", "deploy", "upgrade", "generate")


class CliError(Exception):
    """A user error: printed as `streamforge: error: ...`, exit code 2."""


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="streamforge",
        description="Fault-tolerant stateful streaming pipelines on Bytewax.",
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    sub.required = True
    for name in COMMANDS:
        module = importlib.import_module(f"streamforge_ops.commands.{name}")
        module.register(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return int(args.func(args) or 0)
    except CliError as exc:
        print(f"streamforge: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130
    except Exception as exc:  # config and store errors carry user-facing messages
        from dataflows.config import ConfigError

        if isinstance(exc, ConfigError):
            print(f"streamforge: configuration error: {exc}", file=sys.stderr)
            return 2
        from recovery.store import StoreError

        if isinstance(exc, StoreError):  # after its retries; the message names no secret
            print(f"streamforge: store error: {exc}", file=sys.stderr)
            return 2
        raise


def run(argv: Sequence[str] | None = None) -> NoReturn:
    """The console script: `main`, then exit with its code, also when a thread it abandoned
    is still stuck in I/O (a savepoint given up after `savepoints.timeout` whose upload
    runs in boto3's transfer-manager threads): Python joins non-daemon threads and every
    `concurrent.futures` worker (daemon or not, `thread._python_exit`) at exit and would
    hang there, so with any other thread still alive the process ends with `os._exit`."""
    code = main(argv)
    sys.stdout.flush()
    sys.stderr.flush()
    me = threading.current_thread()
    if any(t is not me and t.is_alive() for t in threading.enumerate()):
        os._exit(code)
    sys.exit(code)


if __name__ == "__main__":
    run()
