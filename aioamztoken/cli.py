"""The ``aioamztoken`` command."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

__all__ = ["main"]

EXIT_OK = 0
EXIT_FAILURE = 1
EXIT_USAGE = 2


def _build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="aioamztoken",
        description=(
            "Keep Amazon Ads API (Login with Amazon) tokens valid. "
            "Run 'aioamztoken demo' to see it work against the embedded emulator."
        ),
    )
    commands = parser.add_subparsers(dest="command", metavar="COMMAND")
    commands.add_parser(
        "demo",
        help="run a realistic session against the embedded emulator (no Amazon account needed)",
        description=(
            "Start the embedded Login with Amazon + Ads API emulator on 127.0.0.1 and drive "
            "many accounts with many concurrent callers, an expired token, a revoked refresh "
            "token and a token the API rejects; print what it took."
        ),
    )
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line; return the exit status."""
    parser = _build_parser()
    args = parser.parse_args(argv)
    if args.command == "demo":
        from ._demo import main as demo

        return demo(sys.stdout)
    parser.print_help()
    return EXIT_USAGE
