"""Small pieces of the ``aioamztoken`` command: options accepted before or after the
command, safe printing, confirmation prompts, quiet exits on a closed pipe."""

from __future__ import annotations

import argparse
import contextlib
import os
import signal
import sys
import unicodedata
from typing import Any

__all__ = [
    "CommandParser",
    "add_global_options",
    "ask_yes_no",
    "escape",
    "interruptible",
    "missing_extra",
    "open_missing_streams",
    "silence_stdout",
    "strip_controls",
]

_CONTROL = frozenset({"Cc", "Cf", "Zl", "Zp"})


def escape(text: str) -> str:
    """``text`` with every control character (ANSI escapes, newlines, bidi overrides...)
    written as a visible escape, so that an account id or server text cannot rewrite the
    terminal or forge output lines."""
    if not any(unicodedata.category(c) in _CONTROL for c in text):
        return text
    return "".join(
        c
        if unicodedata.category(c) not in _CONTROL
        else (f"\\x{ord(c):02x}" if ord(c) < 0x100 else f"\\u{ord(c):04x}")
        for c in text
    )


def strip_controls(text: str) -> str:
    """``text`` without its control characters: for text echoed back to a browser."""
    return "".join(c for c in text if unicodedata.category(c) not in _CONTROL)


def add_global_options(parser: argparse.ArgumentParser, *, after_command: bool) -> None:
    """The options every command takes. Before the command they carry the defaults (from
    the environment); after it they default to nothing, so they only override."""
    env = os.environ.get

    def default(value: Any) -> Any:
        return argparse.SUPPRESS if after_command else value

    group = parser.add_argument_group(
        "global options (accepted before or after the command)" if after_command else None
    )
    target = group if after_command else parser
    target.add_argument(
        "--store",
        default=default(env("AIOAMZTOKEN_STORE")),
        help="store URL (file:///…, dir:///…, encrypted-file:///…, keyring://service, "
        "redis://…); default $AIOAMZTOKEN_STORE or a file in the user data directory",
    )
    target.add_argument(
        "--client-id",
        default=default(env("AIOAMZTOKEN_CLIENT_ID")),
        help="default $AIOAMZTOKEN_CLIENT_ID",
    )
    target.add_argument(
        "--region",
        default=default(env("AIOAMZTOKEN_REGION", "na")),
        help="na, eu or fe; default $AIOAMZTOKEN_REGION or na",
    )
    target.add_argument(
        "--token-url",
        default=default(env("AIOAMZTOKEN_TOKEN_URL")),
        help="override the token endpoint",
    )
    target.add_argument(
        "--consent-url",
        default=default(env("AIOAMZTOKEN_CONSENT_URL")),
        help="override the consent page",
    )
    target.add_argument(
        "--json",
        action="store_true",
        default=default(False),
        help="machine-readable output (accounts)",
    )
    target.add_argument(
        "--client-auth",
        choices=("post", "basic"),
        default=default(env("AIOAMZTOKEN_CLIENT_AUTH", "post")),
        help="send the client credentials in the form (post, as Amazon documents) or in an "
        "HTTP Basic header; default $AIOAMZTOKEN_CLIENT_AUTH or post",
    )
    target.add_argument(
        "--authorization-max-age",
        default=default(env("AIOAMZTOKEN_AUTHORIZATION_MAX_AGE")),
        metavar="DAYS",
        type=days,
        help="how long a grant lasts before the account must be authorized again "
        "(365 for public SP-API apps); default $AIOAMZTOKEN_AUTHORIZATION_MAX_AGE",
    )


def days(value: str) -> float:
    """``--authorization-max-age``: a positive number of days."""
    try:
        number = float(value)
    except ValueError:
        number = float("nan")
    if not (0 < number < 100_000):
        raise argparse.ArgumentTypeError(f"expected a positive number of days, not {value!r}")
    return number


class CommandParser(argparse.ArgumentParser):
    """The parser of one command: it also takes the global options, so that
    ``aioamztoken accounts --store URL`` works like ``aioamztoken --store URL accounts``.
    An option the command defines itself replaces the global one."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        kwargs.setdefault("conflict_handler", "resolve")
        super().__init__(*args, **kwargs)
        add_global_options(self, after_command=True)


@contextlib.contextmanager
def interruptible() -> Any:
    """Let Ctrl-C interrupt a blocking read of the terminal made on the event loop.

    ``asyncio.run`` replaces the SIGINT handler with one that only cancels the main task,
    which cannot run while the loop's thread waits in ``readline``: the prompt would
    ignore Ctrl-C. Inside this block Ctrl-C raises ``KeyboardInterrupt`` at once."""
    try:
        previous = signal.signal(signal.SIGINT, signal.default_int_handler)
    except (ValueError, OSError):  # not the main thread: nothing to change
        yield
        return
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, previous)


def ask_yes_no(question: str) -> bool:
    """Ask ``question`` on the terminal; true only for an explicit yes. Ctrl-D is a no,
    Ctrl-C raises ``KeyboardInterrupt``."""
    print(f"{question} [y/N] ", end="", file=sys.stderr, flush=True)
    try:
        with interruptible():
            answer = sys.stdin.readline()
    except (EOFError, OSError):
        answer = ""
    if not answer.endswith("\n"):
        print(file=sys.stderr)
    return answer.strip().lower() in ("y", "yes")


def missing_extra(exc: ImportError) -> str:
    """One line for an optional dependency that is not installed, naming the extra."""
    message = " ".join(str(exc).split())
    if "pip install" in message:
        return message
    name = (exc.name or "").split(".")[0]
    extra = {"redis": "redis", "keyring": "keyring", "keyrings": "keyring"}.get(name)
    if extra is not None:
        return f"this needs the {name} package: pip install 'aioamztoken[{extra}]'"
    return f"a module is missing ({name or message}): reinstall aioamztoken"


def silence_stdout() -> None:
    """After a ``BrokenPipeError`` (``aioamztoken accounts | head -1``): point standard
    output at /dev/null, so that the interpreter's last flush raises nothing either."""
    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        os.close(devnull)
    except (OSError, ValueError, AttributeError):  # no real stdout: nothing to silence
        pass


def open_missing_streams() -> None:
    """Started with standard output or error closed (``aioamztoken accounts >&-``), Python
    sets ``sys.stdout`` / ``sys.stderr`` to ``None``: point them at /dev/null, so that
    nothing fails on them and messages meant for stderr never land in stdout."""
    for name in ("stdout", "stderr"):
        if getattr(sys, name) is None:
            # Kept open until the process exits (closefd=False: no warning at exit).
            fd = os.open(os.devnull, os.O_WRONLY)
            setattr(sys, name, open(fd, "w", encoding="utf-8", closefd=False))  # noqa: SIM115
