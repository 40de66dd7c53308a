"""A child process for the store tests that need processes: one role per first argument.

save-many KIND PATH PREFIX COUNT  print "ready", wait for a line on stdin, save COUNT
                                  accounts PREFIX-0.. concurrently, print "done"
hold-lock KIND PATH ACCOUNT       hold lock(ACCOUNT), print "locked", wait for a line on
                                  stdin, release it, print "released"
churn FILE DIR START              save (and delete) accounts into a FileTokenStore and a
                                  DirectoryTokenStore in a tight loop, generations from
                                  START up; print "ready" after the first round; never ends
churn-one KIND PATH START         the same, into the one store KIND PATH

KIND is "file", "directory", "encrypted" (an EncryptedFileTokenStore whose key is in the
environment variable AIOAMZTOKEN_KEY) or "keyring" (a KeyringTokenStore of service PATH,
on the backend that keyring's environment variables choose). Tokens are written by
token_for(), which the parent uses to check what it reads back.
"""

from __future__ import annotations

import asyncio
import os
import sys

from aioamztoken._models import Token
from aioamztoken.stores import (
    DirectoryTokenStore,
    EncryptedFileTokenStore,
    FileTokenStore,
    KeyringTokenStore,
)

#: Accounts the churn rewrites each round, and accounts it adds and deletes.
BASE_ACCOUNTS = [f"base-{i}" for i in range(8)]
CHURN_ACCOUNTS = [f"churn-{i}" for i in range(12)]


def token_for(account_id: str, generation: int) -> Token:
    """The token of ``account_id`` at ``generation``: each field tells both apart."""
    return Token(
        f"Atza|{account_id}|{generation}",
        f"Atzr|{account_id}|{generation}",
        float(generation),
        scope=f"scope-{account_id}",
    )


def generation_of(account_id: str, token: Token) -> int:
    """The generation ``token`` was made at; AssertionError if its fields disagree (torn)."""
    generation = int(token.expires_at)
    assert token == token_for(account_id, generation), f"torn record for {account_id!r}"
    return generation


Store = FileTokenStore | DirectoryTokenStore | KeyringTokenStore


def open_store(kind: str, path: str) -> Store:
    if kind == "encrypted":
        return EncryptedFileTokenStore(path, key=os.environ["AIOAMZTOKEN_KEY"])
    if kind == "keyring":
        # keyring's environment variables pick keyrings.alt's plaintext file: opted in to.
        return KeyringTokenStore(path, allow_insecure_backend=True)
    return FileTokenStore(path) if kind == "file" else DirectoryTokenStore(path)


def say(word: str) -> None:
    print(word, flush=True)


async def save_many(kind: str, path: str, prefix: str, count: int) -> None:
    store = open_store(kind, path)
    say("ready")
    sys.stdin.readline()
    accounts = [f"{prefix}-{i}" for i in range(count)]
    await asyncio.gather(*(store.save(a, token_for(a, 1)) for a in accounts))
    say("done")


async def hold_lock(kind: str, path: str, account_id: str) -> None:
    store = open_store(kind, path)
    async with store.lock(account_id):
        say("locked")
        sys.stdin.readline()
    say("released")


async def churn(stores: tuple[Store, ...], start: int) -> None:
    generation = start
    while True:
        generation += 1
        for store in stores:
            for account_id in BASE_ACCOUNTS:
                await store.save(account_id, token_for(account_id, generation))
            added = CHURN_ACCOUNTS[generation % len(CHURN_ACCOUNTS)]
            await store.save(added, token_for(added, generation))
            await store.delete(CHURN_ACCOUNTS[(generation + 5) % len(CHURN_ACCOUNTS)])
        if generation == start + 1:
            say("ready")


def main(argv: list[str]) -> None:
    role, *args = argv
    if role == "save-many":
        asyncio.run(save_many(args[0], args[1], args[2], int(args[3])))
    elif role == "hold-lock":
        asyncio.run(hold_lock(args[0], args[1], args[2]))
    elif role == "churn":
        stores = (FileTokenStore(args[0]), DirectoryTokenStore(args[1]))
        asyncio.run(churn(stores, int(args[2])))
    elif role == "churn-one":
        asyncio.run(churn((open_store(args[0], args[1]),), int(args[2])))
    else:
        raise SystemExit(f"unknown role {role!r}")


if __name__ == "__main__":
    main(sys.argv[1:])
