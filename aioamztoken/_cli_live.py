"""Live terminal views of the ``aioamztoken`` command, drawn with rich (the ``[cli]`` extra).

- ``accounts --watch``: a table that updates in place (state, expiry, authorization age
  where known, whether a refresh is running, the last error), most urgent accounts first;
- ``refresh --all``: a progress bar with a rate, an ETA and a count of failures, each
  failure printed above the bar as it happens.

On a non-terminal, or without rich installed, both keep the plain output of the command
(``accounts --watch`` then prints the plain table again every interval).
"""

from __future__ import annotations

import asyncio
import sys
import time
from collections.abc import Awaitable, Callable, Sequence
from typing import TYPE_CHECKING, Any, TextIO

from ._errors import AmzTokenError
from ._models import AccountState, AccountStatus

if TYPE_CHECKING:
    from ._manager import AsyncTokenManager

__all__ = ["has_rich", "refresh_all_live", "watch_accounts"]

_URGENCY = {
    AccountState.NEEDS_REAUTH: 0,
    AccountState.EXPIRED: 1,
    AccountState.DUE: 2,
    AccountState.FRESH: 3,
}
_STYLE = {
    AccountState.NEEDS_REAUTH: "bold red",
    AccountState.EXPIRED: "red",
    AccountState.DUE: "yellow",
    AccountState.FRESH: "green",
}


def has_rich() -> bool:
    """True when rich can be imported (it is not imported here otherwise)."""
    try:
        import rich  # noqa: F401
    except ImportError:
        return False
    return True


def printable(text: str) -> str:
    """``text`` with control characters escaped, so that none reaches the terminal."""
    if text.isprintable():
        return text
    return "".join(c if c.isprintable() else repr(c)[1:-1] for c in text)


def _state_text(state: AccountState) -> str:
    return "needs re-auth" if state is AccountState.NEEDS_REAUTH else state.value


def _age(seconds: float) -> str:
    days = int(seconds // 86400)
    if days >= 1:
        return f"{days}d ago"
    from .cli import _duration

    return f"{_duration(seconds)} ago"


def _last_error(status: AccountStatus) -> str:
    if status.last_error:
        return status.last_error
    if status.state is AccountState.NEEDS_REAUTH:
        return "refresh token rejected: run 'aioamztoken login ACCOUNT'"
    return ""


async def _statuses(mgr: AsyncTokenManager) -> list[AccountStatus]:
    rows = []
    for account_id in await mgr.accounts():
        try:
            rows.append(await mgr.status(account_id))
        except AmzTokenError:
            continue  # removed meanwhile
    rows.sort(key=lambda s: (_URGENCY[s.state], s.account_id))
    return rows


def _table(rows: Sequence[AccountStatus], *, height: int, interval: float) -> Any:
    from rich.console import Group
    from rich.table import Table
    from rich.text import Text

    from .cli import _duration

    counts = dict.fromkeys(_URGENCY, 0)
    for status in rows:
        counts[status.state] += 1
    summary = Text(f"{len(rows)} account{'s' if len(rows) != 1 else ''}: ")
    summary.append(
        ", ".join(f"{counts[s]} {_state_text(s)}" for s in _URGENCY if counts[s]) or "none"
    )
    summary.append(f"  (updated {time.strftime('%H:%M:%S')}, every {interval:g} s; Ctrl-C quits)")
    table = Table(expand=False, pad_edge=False, box=None, header_style="bold")
    # Only the last error gives way when the terminal is narrow.
    widest = max((len(printable(s.account_id)) for s in rows), default=7)
    table.add_column("ACCOUNT", no_wrap=True, min_width=min(widest, 48))
    table.add_column("STATE", no_wrap=True, min_width=13)
    table.add_column("EXPIRES IN", justify="right", no_wrap=True, min_width=10)
    table.add_column("AUTHORIZED", justify="right", no_wrap=True, min_width=10)
    table.add_column("LAST ERROR", overflow="ellipsis", no_wrap=True)
    room = max(1, height - 4)
    shown = rows if len(rows) <= room else rows[: room - 1]
    now = time.time()
    for status in shown:
        authorized_at = getattr(status, "authorized_at", None)
        state = Text(_state_text(status.state), style=_STYLE[status.state])
        if status.refreshing:
            state.append(" (refreshing)", style="dim")
        table.add_row(
            Text(printable(status.account_id)),
            state,
            _duration(status.expires_in),
            "-" if authorized_at is None else _age(now - authorized_at),
            Text(printable(_last_error(status)), style="red"),
        )
    parts: list[Any] = [summary, table]
    if len(shown) < len(rows):
        parts.append(Text(f"... and {len(rows) - len(shown)} more", style="dim"))
    return Group(*parts)


async def watch_accounts(
    mgr: AsyncTokenManager,
    *,
    interval: float,
    count: int | None,
    plain: Callable[[], Awaitable[Any]],
    out: TextIO | None = None,
    as_json: bool = False,
) -> int:
    """Show the accounts every ``interval`` seconds, ``count`` times (``None``: until Ctrl-C).

    ``plain`` prints the command's plain output once: used off a terminal, without rich,
    or when JSON was asked for (``as_json``: machine output even on a terminal).
    """
    out = out or sys.stdout
    if as_json or not (out.isatty() and has_rich()):
        shown = 0
        while True:
            await plain()
            shown += 1
            if count is not None and shown >= count:
                return 0
            out.flush()
            await asyncio.sleep(interval)
            print(file=out)
    from rich.console import Console
    from rich.live import Live

    console = Console(file=out)
    shown = 0
    with Live(console=console, auto_refresh=False, transient=False) as live:
        while True:
            rows = await _statuses(mgr)
            live.update(_table(rows, height=console.height, interval=interval), refresh=True)
            shown += 1
            if count is not None and shown >= count:
                return 0
            await asyncio.sleep(interval)


async def refresh_all_live(
    accounts: Sequence[str],
    refresh: Callable[[str], Awaitable[str | None]],
    out: TextIO,
) -> list[tuple[str, str]]:
    """Run ``refresh`` (which returns what failed, or ``None``) for every account at once,
    under a progress bar on ``out``; return the failures.

    Each failure is printed above the bar as it happens, on one line.
    """
    from rich.console import Console
    from rich.progress import (
        BarColumn,
        MofNCompleteColumn,
        Progress,
        ProgressColumn,
        TextColumn,
        TimeRemainingColumn,
    )
    from rich.text import Text

    class RateColumn(ProgressColumn):
        def render(self, task: Any) -> Text:
            speed = task.finished_speed or task.speed
            return Text("-/s" if speed is None else f"{speed:.1f}/s", style="progress.data.speed")

    failures: list[tuple[str, str]] = []
    console = Console(file=out)
    progress = Progress(
        TextColumn("refreshing"),
        BarColumn(),
        MofNCompleteColumn(),
        RateColumn(),
        TextColumn("ETA"),
        TimeRemainingColumn(),
        TextColumn("{task.fields[failed]}"),
        console=console,
        refresh_per_second=8,
    )

    async def one(task_id: Any, account_id: str) -> None:
        reason = await refresh(account_id)
        if reason is not None:
            failures.append((account_id, reason))
            progress.console.print(
                Text(
                    f"failed: {printable(account_id)}: {printable(' '.join(reason.split()))}",
                    style="red",
                )
            )
        failed = f"[red]{len(failures)} failed[/red]" if failures else ""
        progress.update(task_id, advance=1, failed=failed)

    with progress:
        task_id = progress.add_task("refresh", total=len(accounts), failed="")
        await asyncio.gather(*(one(task_id, a) for a in accounts))
    return failures
