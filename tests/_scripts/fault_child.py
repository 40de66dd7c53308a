"""A child process for the fault tests (issue 11): one role per first argument.

flock PATH                 take an exclusive flock on PATH (created if needed), print
                           "locked", hold it until a line arrives on stdin (or death)
refresh STORE_URL ACCOUNT  open_store(STORE_URL) and a manager pointed at the token
                           endpoint in AIOAMZTOKEN_TOKEN_URL (client id and secret in
                           AIOAMZTOKEN_CLIENT_ID and AIOAMZTOKEN_CLIENT_SECRET), print
                           "ready", wait for a line, get the access token of ACCOUNT and
                           print one JSON line: {"token": ...} or {"error": class name}
probe KIND PATH OP         with at most 1 GiB of address space, open a store (KIND "file",
                           "directory" or "encrypted", key in AIOAMZTOKEN_KEY) at PATH and
                           run OP ("load", "save", "delete" or "accounts") on account "a";
                           print one JSON line: {"ok": true} or {"error": ..., "message": ...},
                           with "seconds": how long OP took
"""

from __future__ import annotations

import asyncio
import fcntl
import json
import os
import sys
import time


def say(word: str) -> None:
    print(word, flush=True)


def hold_flock(path: str) -> None:
    fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
    fcntl.flock(fd, fcntl.LOCK_EX)
    say("locked")
    sys.stdin.readline()
    os.close(fd)
    say("released")


async def refresh(store_url: str, account_id: str) -> None:
    from aioamztoken import AmzTokenError, AsyncTokenManager, open_store

    store = open_store(store_url)
    async with AsyncTokenManager(
        os.environ["AIOAMZTOKEN_CLIENT_ID"],
        os.environ["AIOAMZTOKEN_CLIENT_SECRET"],
        store=store,
        token_url=os.environ["AIOAMZTOKEN_TOKEN_URL"],
    ) as mgr:
        say("ready")
        await asyncio.to_thread(sys.stdin.readline)
        try:
            outcome = {"token": await mgr.get_access_token(account_id)}
        except AmzTokenError as exc:
            outcome = {"error": type(exc).__name__}
        print(json.dumps(outcome), flush=True)
    aclose = getattr(store, "aclose", None)
    if aclose is not None:
        await aclose()


async def probe(kind: str, path: str, operation: str) -> None:
    import resource

    from aioamztoken import Token
    from aioamztoken.stores import DirectoryTokenStore, EncryptedFileTokenStore, FileTokenStore

    # A store that reads an endless device must fail, not eat the machine's memory.
    resource.setrlimit(resource.RLIMIT_AS, (1 << 30, 1 << 30))
    store = (
        FileTokenStore(path)
        if kind == "file"
        else DirectoryTokenStore(path)
        if kind == "directory"
        else EncryptedFileTokenStore(path, key=os.environ["AIOAMZTOKEN_KEY"])
    )
    say("ready")
    started = time.monotonic()
    try:
        if operation == "load":
            await store.load("a")
        elif operation == "save":
            await store.save("a", Token("Atza|x", "Atzr|x", 2e9))
        elif operation == "delete":
            await store.delete("a")
        else:
            await store.accounts()
        outcome: dict[str, object] = {"ok": True}
    except BaseException as exc:
        outcome = {"error": type(exc).__name__, "message": str(exc)}
    outcome["seconds"] = time.monotonic() - started
    print(json.dumps(outcome), flush=True)


def main(argv: list[str]) -> None:
    role, *args = argv
    if role == "flock":
        hold_flock(args[0])
    elif role == "probe":
        asyncio.run(probe(args[0], args[1], args[2]))
    elif role == "refresh":
        asyncio.run(refresh(args[0], args[1]))
    else:
        raise SystemExit(f"unknown role {role!r}")


if __name__ == "__main__":
    main(sys.argv[1:])
