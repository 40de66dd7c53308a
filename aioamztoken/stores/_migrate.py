"""Copying every account from one store to another: :func:`migrate`."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Awaitable
from dataclasses import dataclass, field
from typing import TypeVar

from .._errors import AmzTokenError, StorageError
from .._scrub import scrubbed
from ._base import TokenStore

__all__ = ["MigrationReport", "migrate"]

T = TypeVar("T")


@dataclass(frozen=True)
class MigrationReport:
    """What :func:`migrate` did, account by account. Holds no secret: safe to print or log.

    ``copied`` lists the accounts written to the target and read back equal; ``skipped``
    and ``failed`` map account ids to the reason. ``ok`` is true when nothing failed.
    A frozen dataclass, built once and never changed by aioamztoken: safe to read from
    any task or thread.
    """

    source: str
    """The ``repr`` of the source store."""
    target: str
    """The ``repr`` of the target store."""
    copied: tuple[str, ...] = ()
    skipped: dict[str, str] = field(default_factory=dict)
    failed: dict[str, str] = field(default_factory=dict)

    @property
    def ok(self) -> bool:
        """True when no account failed."""
        return not self.failed

    @property
    def total(self) -> int:
        """How many accounts the source listed."""
        return len(self.copied) + len(self.skipped) + len(self.failed)

    def render(self) -> str:
        """A few lines for a person: the counts, then each skipped and failed account."""
        lines = [
            f"from     {self.source}",
            f"to       {self.target}",
            f"accounts {self.total}",
            f"copied   {len(self.copied)} (each read back and verified)",
            f"skipped  {len(self.skipped)}",
            *(f"  {account_id!r}: {why}" for account_id, why in sorted(self.skipped.items())),
            f"failed   {len(self.failed)}",
            *(f"  {account_id!r}: {why}" for account_id, why in sorted(self.failed.items())),
            f"result   {'ok' if self.ok else 'FAILED'}",
        ]
        return "\n".join(lines)

    def __str__(self) -> str:
        return self.render()


class _Failed(Exception):
    """An account that cannot be copied, and why (already free of secrets)."""


async def migrate(
    source: TokenStore, target: TokenStore, *, overwrite: bool = False, concurrency: int = 16
) -> MigrationReport:
    """Copy every account of ``source`` into ``target``, read each back and compare.

    An account already in the target with an equal token is skipped; with another token
    it is skipped too unless ``overwrite`` is true, when it is replaced. An account that
    cannot be read, written or verified is reported as failed with the reason, and the
    others are still copied; nothing is ever deleted from either store, so running it
    again after fixing a failure is safe. Where ``source`` has ``lock(account_id)``, each
    account is copied under it, so a refresh running elsewhere finishes first and the
    newest token is copied. Stop the managers writing to ``target`` meanwhile.

    Up to ``concurrency`` accounts are copied at once. Raises StorageError if the source
    cannot list its accounts, and ``ValueError`` if ``source`` is ``target``.
    """
    if source is target:
        raise ValueError("the source and the target are the same store")
    if concurrency < 1:
        raise ValueError("concurrency must be at least 1")
    # Raised outside the except block, with a scrubbed cause: a store's error may hold data.
    failure: StorageError | None = None
    try:
        account_ids = sorted(await source.accounts())
    except AmzTokenError:
        raise
    except Exception as exc:
        failure = StorageError(
            f"cannot list the accounts of {source!r}: {type(exc).__name__}", location=repr(source)
        )
        failure.__cause__ = scrubbed(exc, text=False)
    if failure is not None:
        raise failure
    slots = asyncio.Semaphore(concurrency)
    outcomes: dict[str, tuple[str, str]] = {}

    lock = getattr(source, "lock", None)

    async def copy_one(account_id: str) -> None:
        async with slots, contextlib.AsyncExitStack() as stack:
            try:
                if lock is not None:
                    held = stack.enter_async_context(lock(account_id))
                    await _step(source, "taking its lock in the source", held)
                outcomes[account_id] = await _copy(source, target, account_id, overwrite)
            except _Failed as failure:
                outcomes[account_id] = ("failed", str(failure))

    await asyncio.gather(*(copy_one(account_id) for account_id in account_ids))
    by_outcome: dict[str, dict[str, str]] = {"copied": {}, "skipped": {}, "failed": {}}
    for account_id in account_ids:
        outcome, why = outcomes[account_id]
        by_outcome[outcome][account_id] = why
    return MigrationReport(
        source=repr(source),
        target=repr(target),
        copied=tuple(by_outcome["copied"]),
        skipped=by_outcome["skipped"],
        failed=by_outcome["failed"],
    )


async def _copy(
    source: TokenStore, target: TokenStore, account_id: str, overwrite: bool
) -> tuple[str, str]:
    token = await _step(source, "reading it from the source", source.load(account_id))
    if token is None:
        return "skipped", "no longer in the source"
    present = await _step(target, "reading it from the target", target.load(account_id))
    if present == token:
        return "skipped", "already in the target with the same token"
    if present is not None and not overwrite:
        return "skipped", "in the target with another token (overwrite=True replaces it)"
    await _step(target, "writing it to the target", target.save(account_id, token))
    written = await _step(target, "reading it back from the target", target.load(account_id))
    if written != token:
        raise _Failed("the target gave back another token than the one written to it")
    return "copied", ""


async def _step(store: TokenStore, action: str, call: Awaitable[T]) -> T:
    try:
        return await call
    except (AmzTokenError, ValueError, TypeError) as exc:
        # Our stores' messages never hold secrets; another store's might.
        ours = isinstance(exc, AmzTokenError) or type(store).__module__.startswith("aioamztoken.")
        raise _Failed(f"{action}: {exc}" if ours else f"{action}: {type(exc).__name__}") from exc
    except Exception as exc:
        raise _Failed(f"{action}: {type(exc).__name__}") from exc
