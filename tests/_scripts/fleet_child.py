"""One process of a fleet sharing a RedisTokenStore, for tests/test_redis.py and bench/.

Run as ``fleet_child.py ROLE CONFIG`` where CONFIG is a JSON object with ``redis_url`` and
``namespace`` (or a ``store_url`` for :func:`aioamztoken.open_store`), ``token_url``,
``client_id``, ``client_secret`` and the role's own keys:

fleet    ``accounts`` (list), ``callers``: print "ready", wait for a line on stdin, then
         ``callers`` tasks each ask for every account at once; print a JSON line
         ``{"tokens": {account: token}, "errors": [...]}`` and exit.
refresh  ``account``, ``lock_ttl``: print "ready", then ask for the account's token (the
         test kills the process while it holds the account's lock); print the token.
authlib  ``accounts``, ``callers``: like fleet, with one Authlib ``AsyncOAuth2Client`` per
         account and no shared store (a peer's behaviour, for bench/bench_fleet.py); each
         token starts expired, refresh tokens come in ``refresh_tokens``.
"""

from __future__ import annotations

import asyncio
import json
import sys
import warnings
from typing import Any

import aioamztoken as at


def say(text: str) -> None:
    print(text, flush=True)


async def wait_for_go() -> None:
    await asyncio.get_running_loop().run_in_executor(None, sys.stdin.readline)


def open_fleet_store(config: dict[str, Any], **redis_options: Any) -> Any:
    if "store_url" in config:
        return at.open_store(config["store_url"])
    return at.RedisTokenStore(config["redis_url"], namespace=config["namespace"], **redis_options)


def manager(config: dict[str, Any], store: Any) -> at.AsyncTokenManager:
    return at.AsyncTokenManager(
        config["client_id"],
        config["client_secret"],
        store=store,
        token_url=config["token_url"],
        auto_refresh=False,
    )


async def fleet(config: dict[str, Any]) -> None:
    accounts: list[str] = config["accounts"]
    store = open_fleet_store(config)
    async with store, manager(config, store) as mgr:
        await store.accounts()  # connected (to the current master, behind a Sentinel)
        say("ready")
        await wait_for_go()

        async def caller() -> list[str | BaseException]:
            return await asyncio.gather(
                *(mgr.get_access_token(a) for a in accounts), return_exceptions=True
            )

        results = await asyncio.gather(*(caller() for _ in range(config["callers"])))
        tokens: dict[str, str] = {}
        errors: list[str] = []
        for row in results:
            for account_id, result in zip(accounts, row, strict=True):
                if isinstance(result, BaseException):
                    errors.append(f"{account_id}: {type(result).__name__}: {result}")
                elif tokens.setdefault(account_id, result) != result:
                    errors.append(f"{account_id}: two different tokens in one process")
        say(json.dumps({"tokens": tokens, "errors": errors}))


async def refresh(config: dict[str, Any]) -> None:
    options = {} if "store_url" in config else {"lock_ttl": config["lock_ttl"]}
    store = open_fleet_store(config, **options)
    async with store, manager(config, store) as mgr:
        say("ready")
        say(await mgr.get_access_token(config["account"]))


async def authlib_fleet(config: dict[str, Any]) -> None:
    with warnings.catch_warnings():
        import authlib.deprecate  # noqa: F401  (on import it turns its warnings "always" on)

        warnings.simplefilter("ignore")  # its notice that plain httpx is deprecated
        from authlib.integrations.httpx_client import AsyncOAuth2Client

    accounts: list[str] = config["accounts"]
    clients = {
        account_id: AsyncOAuth2Client(
            config["client_id"],
            config["client_secret"],
            token_endpoint_auth_method="client_secret_post",
            token_endpoint=config["token_url"],
            token={
                "access_token": "",
                "refresh_token": refresh_token,
                "token_type": "bearer",
                "expires_at": 0,
            },
        )
        for account_id, refresh_token in zip(accounts, config["refresh_tokens"], strict=True)
    }
    say("ready")
    await wait_for_go()

    async def one(account_id: str) -> str:
        client = clients[account_id]
        await client.ensure_active_token(client.token)
        return str(client.token["access_token"])

    results = await asyncio.gather(
        *(one(a) for _ in range(config["callers"]) for a in accounts), return_exceptions=True
    )
    errors = [f"{type(r).__name__}: {r}" for r in results if isinstance(r, BaseException)]
    for client in clients.values():
        await client.aclose()
    say(json.dumps({"tokens": {}, "errors": errors}))


def main(argv: list[str]) -> None:
    role, raw = argv
    config = json.loads(raw)
    roles = {"fleet": fleet, "refresh": refresh, "authlib": authlib_fleet}
    if role not in roles:
        raise SystemExit(f"unknown role {role!r}")
    asyncio.run(roles[role](config))


if __name__ == "__main__":
    main(sys.argv[1:])
