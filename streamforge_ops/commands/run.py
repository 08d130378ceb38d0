"""`streamforge run` (placeholder: replaced by the module that implements it)."""

from __future__ import annotations

import argparse

from streamforge_ops.cli import CliError


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("run", help="(not implemented yet)")
    p.set_defaults(func=_run)


def _run(args: argparse.Namespace) -> int:
    raise CliError("'run' is not implemented yet")
