"""Authorization age: when each grant was made, carried through refreshes, restarts and
every store, and a warning once an account nears the date it must be re-authorized."""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from aioamztoken import (
    AsyncTokenManager,
    BlockingTokenManager,
    DirectoryTokenStore,
    EncryptedFileTokenStore,
    FileTokenStore,
    MemoryTokenStore,
    Token,
)
from aioamztoken.testing import AmazonEmulator

from .redis_server import REDIS_SERVER, SKIP_REASON, RedisServer

DAY = 86400.0
YEAR = 365 * DAY
KEY = EncryptedFileTokenStore.generate_key()


@pytest.fixture(scope="module")
def redis_server() -> Iterator[RedisServer]:
    if REDIS_SERVER is None:
        pytest.skip(SKIP_REASON)
    server = RedisServer().start()
    yield server
    server.stop()


@pytest.fixture
def keyring_backend(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Any:
    keyring = pytest.importorskip("keyring")
    pytest.importorskip("keyrings.alt", reason="the insecure-test-keyring extra is not installed")
    from keyrings.alt.file import PlaintextKeyring

    monkeypatch.setenv("XDG_DATA_HOME", str(tmp_path / "data"))
    chosen = PlaintextKeyring()
    chosen.file_path = str(tmp_path / "keyring.cfg")
    monkeypatch.setattr(keyring.core, "_keyring_backend", keyring.core._keyring_backend)
    keyring.set_keyring(chosen)  # selected explicitly: never the machine's own keyring
    return chosen


StoreMaker = Callable[[], Any]

STORE_KINDS = [
    "memory",
    "file",
    "directory",
    "encrypted",
    "keyring",
    pytest.param("redis", marks=pytest.mark.redis),
]


@pytest.fixture
def store_maker(request: pytest.FixtureRequest, tmp_path: Path) -> StoreMaker:
    """Makes a new store object on the same data each call: a restart."""
    kind = request.param
    if kind == "memory":
        shared = MemoryTokenStore()
        return lambda: shared
    if kind == "file":
        return lambda: FileTokenStore(tmp_path / "tokens.json")
    if kind == "directory":
        return lambda: DirectoryTokenStore(tmp_path / "tokens")
    if kind == "encrypted":
        return lambda: EncryptedFileTokenStore(tmp_path / "tokens.enc", key=KEY)
    if kind == "keyring":
        from aioamztoken import KeyringTokenStore

        request.getfixturevalue("keyring_backend")
        # A plaintext test backend: KeyringTokenStore refuses it unless opted in (issue 12).
        return lambda: KeyringTokenStore(
            "aioamztoken-age-test", lock_dir=tmp_path / "locks", allow_insecure_backend=True
        )
    assert kind == "redis"
    server: RedisServer = request.getfixturevalue("redis_server")
    server.flush()
    from aioamztoken import RedisTokenStore

    return lambda: RedisTokenStore(server.url, namespace="age-test")


async def close_store(store: Any) -> None:
    closer = getattr(store, "aclose", None)
    if closer is not None:
        await closer()


def manager(amazon: AmazonEmulator, store: Any, **options: Any) -> AsyncTokenManager:
    return AsyncTokenManager(
        amazon.client_id, amazon.client_secret, store=store, token_url=amazon.token_url, **options
    )


# ------------------------------------------------------------------------------ every store


@pytest.mark.parametrize("store_maker", STORE_KINDS, indirect=True)
async def test_authorized_at_survives_refreshes_and_a_restart_in_every_store(
    emulator: AmazonEmulator, store_maker: StoreMaker
) -> None:
    granted = time.time() - 100 * DAY
    store = store_maker()
    try:
        async with manager(emulator, store, authorization_max_age=YEAR) as mgr:
            await mgr.add_account(
                "acme", emulator.issue_refresh_token("acme"), authorized_at=granted
            )
            first = await mgr.refresh("acme")
            second = await mgr.refresh("acme")
            assert first.access_token != second.access_token
            assert first.authorized_at == second.authorized_at == granted
            stored = await store.load("acme")
            assert stored is not None
            assert stored.access_token == second.access_token
            assert stored.authorized_at == granted
    finally:
        await close_store(store)
    store = store_maker()  # a new process, in effect
    try:
        async with manager(emulator, store, authorization_max_age=YEAR) as mgr:
            status = await mgr.status("acme")
            assert status.authorized_at == granted
            assert status.reauth_due_at == granted + YEAR
            third = await mgr.refresh("acme")
            assert third.authorized_at == granted
            assert (await mgr.status("acme")).reauth_due_at == granted + YEAR
    finally:
        await close_store(store)
    assert emulator.refresh_grants == 3


@pytest.mark.parametrize("store_maker", ["file", "encrypted"], indirect=True)
async def test_a_code_exchange_records_now_and_refreshes_keep_it(
    emulator: AmazonEmulator, store_maker: StoreMaker
) -> None:
    store = store_maker()
    code = emulator.issue_code("acme", redirect_uri="https://app.example/cb")
    before = time.time()
    async with manager(emulator, store) as mgr:
        token = await mgr.exchange_code("acme", code, redirect_uri="https://app.example/cb")
        after = time.time()
        assert token.authorized_at is not None
        assert before <= token.authorized_at <= after
        refreshed = await mgr.refresh("acme")
        assert refreshed.authorized_at == token.authorized_at
        status = await mgr.status("acme")
        assert status.authorized_at == token.authorized_at
        assert status.reauth_due_at is None  # no maximum age was given
    reopened = store_maker()
    loaded = await reopened.load("acme")
    assert loaded is not None
    assert loaded.authorized_at == token.authorized_at


async def test_rotated_refresh_tokens_keep_the_authorization_date() -> None:
    granted = time.time() - 10 * DAY
    async with AmazonEmulator(rotate_refresh_tokens=True) as amazon:
        store = MemoryTokenStore()
        async with manager(amazon, store) as mgr:
            await mgr.add_account("acme", amazon.issue_refresh_token("acme"), authorized_at=granted)
            old = (await store.load("acme")).refresh_token  # type: ignore[union-attr]
            token = await mgr.refresh("acme")
            assert token.refresh_token != old
            assert token.authorized_at == granted


async def test_add_account_defaults_to_now(emulator: AmazonEmulator) -> None:
    store = MemoryTokenStore()
    async with manager(emulator, store) as mgr:
        before = time.time()
        await mgr.add_account("acme", emulator.issue_refresh_token("acme"))
        stored = await store.load("acme")
        assert stored is not None
        assert stored.authorized_at is not None
        assert before <= stored.authorized_at <= time.time()


@pytest.mark.parametrize("value", [float("nan"), float("inf"), -1.0, "2026-01-01", True])
async def test_add_account_refuses_a_bad_authorized_at(
    emulator: AmazonEmulator, value: object
) -> None:
    store = MemoryTokenStore()
    async with manager(emulator, store) as mgr:
        with pytest.raises(ValueError, match="authorized_at"):
            await mgr.add_account("acme", "Atzr|x", authorized_at=value)  # type: ignore[arg-type]
    assert await store.accounts() == []


def test_records_written_without_authorized_at_still_load(tmp_path: Path) -> None:
    old = {
        "format": "aioamztoken/1",
        "accounts": {
            "acme": {
                "access_token": "Atza|a",
                "refresh_token": "Atzr|r",
                "expires_at": 1_700_000_000.0,
                "token_type": "bearer",
                "scope": None,
            }
        },
    }
    path = tmp_path / "tokens.json"
    path.write_text(json.dumps(old))
    path.chmod(0o600)

    async def read() -> Token | None:
        return await FileTokenStore(path).load("acme")

    token = asyncio.run(read())
    assert token is not None
    assert token.authorized_at is None
    assert "authorized_at" not in token.to_dict()
    assert Token.from_dict({**token.to_dict(), "authorized_at": 5}).authorized_at == 5.0
    for bad in ("x", True, float("nan")):
        with pytest.raises(ValueError, match="authorized_at"):
            Token.from_dict({**token.to_dict(), "authorized_at": bad})


async def test_status_without_a_known_date_has_no_due_date(emulator: AmazonEmulator) -> None:
    store = MemoryTokenStore()
    await store.save("acme", Token("", emulator.issue_refresh_token("acme"), 0.0))
    async with manager(emulator, store, authorization_max_age=YEAR) as mgr:
        status = await mgr.status("acme")
        assert status.authorized_at is None
        assert status.reauth_due_at is None


# ------------------------------------------------------------------------------ on_reauth_due


@pytest.mark.parametrize("kind", ["sync", "async"])
async def test_on_reauth_due_runs_exactly_once_per_account(
    emulator: AmazonEmulator, kind: str, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="aioamztoken")
    calls: list[tuple[str, float]] = []

    def sync_hook(account_id: str, due: float) -> None:
        calls.append((account_id, due))

    async def async_hook(account_id: str, due: float) -> None:
        await asyncio.sleep(0)
        calls.append((account_id, due))

    hook = sync_hook if kind == "sync" else async_hook
    granted = time.time() - 340 * DAY  # due in 25 days: inside the 30-day warning
    store = MemoryTokenStore()
    async with manager(
        emulator, store, authorization_max_age=YEAR, reauth_warning=30 * DAY, on_reauth_due=hook
    ) as mgr:
        await mgr.add_account("old", emulator.issue_refresh_token("old"), authorized_at=granted)
        assert calls == [("old", granted + YEAR)]  # ran before add_account returned
        await mgr.add_account("new", emulator.issue_refresh_token("new"))
        for _ in range(3):
            await mgr.refresh("old")
            await mgr.refresh("new")
            await mgr.get_access_token("old")
            status = await mgr.status("old")
            assert status.reauth_due_at == granted + YEAR
        await wait_for(lambda: calls)
        await asyncio.sleep(0.1)  # room for a second call, which must not come
        assert calls == [("old", granted + YEAR)]
    lines = [r for r in caplog.records if "reauth-due" in r.getMessage()]
    assert len(lines) == 1
    assert lines[0].levelno == logging.INFO
    assert lines[0].name == "aioamztoken.audit"
    assert "account='old'" in lines[0].getMessage()
    # Another manager (another process) tells its own hook once too.
    async with manager(
        emulator, store, authorization_max_age=YEAR, on_reauth_due=sync_hook
    ) as other:
        await other.status("old")
        assert len(calls) == 2  # ran before status() returned
        await other.status("old")
    assert calls[1:] == [("old", granted + YEAR)]


async def test_on_reauth_due_is_not_called_outside_the_warning_or_without_a_max_age(
    emulator: AmazonEmulator,
) -> None:
    calls: list[str] = []
    granted = time.time() - 300 * DAY  # due in 65 days
    for options in ({"authorization_max_age": YEAR}, {}):
        store = MemoryTokenStore()
        async with manager(
            emulator, store, on_reauth_due=lambda a, d: calls.append(a), **options
        ) as mgr:
            await mgr.add_account(
                "acme", emulator.issue_refresh_token("acme"), authorized_at=granted
            )
            await mgr.refresh("acme")
            await mgr.status("acme")
            await asyncio.sleep(0.05)
    assert calls == []


async def test_a_reauthorization_can_be_warned_about_again(emulator: AmazonEmulator) -> None:
    calls: list[float] = []
    async with manager(
        emulator,
        MemoryTokenStore(),
        authorization_max_age=YEAR,
        on_reauth_due=lambda a, due: calls.append(due),
    ) as mgr:
        first = time.time() - 360 * DAY
        await mgr.add_account("acme", emulator.issue_refresh_token("acme"), authorized_at=first)
        await wait_for(lambda: len(calls) == 1)
        await mgr.add_account("acme", emulator.issue_refresh_token("acme"), authorized_at=first)
        await asyncio.sleep(0.05)
        assert len(calls) == 1  # the same grant: told once
        second = time.time() - 350 * DAY
        await mgr.add_account("acme", emulator.issue_refresh_token("acme"), authorized_at=second)
        await wait_for(lambda: len(calls) == 2)
    assert calls == [first + YEAR, second + YEAR]


@pytest.mark.parametrize("kind", ["sync", "async"])
async def test_a_raising_on_reauth_due_hook_is_logged_and_ignored(
    emulator: AmazonEmulator, caplog: pytest.LogCaptureFixture, kind: str
) -> None:
    def sync_hook(account_id: str, due: float) -> None:
        raise RuntimeError("boom")

    async def async_hook(account_id: str, due: float) -> None:
        raise RuntimeError("boom")

    hook = sync_hook if kind == "sync" else async_hook

    async with manager(
        emulator, MemoryTokenStore(), authorization_max_age=YEAR, on_reauth_due=hook
    ) as mgr:
        rt = emulator.issue_refresh_token("acme")
        await mgr.add_account("acme", rt, authorized_at=time.time() - YEAR)
        await wait_for(lambda: any("on_reauth_due" in r.getMessage() for r in caplog.records))
        assert await mgr.get_access_token("acme")


@pytest.mark.parametrize(
    ("options", "match"),
    [
        ({"authorization_max_age": 0}, "authorization_max_age"),
        ({"authorization_max_age": float("nan")}, "authorization_max_age"),
        ({"reauth_warning": -1}, "reauth_warning"),
    ],
)
def test_bad_ages_are_refused(options: dict[str, float], match: str) -> None:
    with pytest.raises(ValueError, match=match):
        AsyncTokenManager("cid", "cs", store=MemoryTokenStore(), **options)  # type: ignore[arg-type]


def test_blocking_manager_takes_authorized_at() -> None:
    granted = time.time() - 5 * DAY
    with AmazonEmulator.running_in_thread() as amazon:
        refresh_token = amazon.issue_refresh_token("acme")
        with BlockingTokenManager(
            amazon.client_id,
            amazon.client_secret,
            store=MemoryTokenStore(),
            token_url=amazon.token_url,
            authorization_max_age=YEAR,
        ) as mgr:
            mgr.add_account("acme", refresh_token, authorized_at=granted)
            assert mgr.refresh("acme").authorized_at == granted
            status = mgr.status("acme")
    assert status.authorized_at == granted
    assert status.reauth_due_at == granted + YEAR


async def wait_for(condition: Callable[[], object], timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "condition not met in time"
        await asyncio.sleep(0.01)


@pytest.mark.parametrize("kind", ["sync", "async"])
async def test_a_refresh_tells_the_hook_of_an_account_it_finds_near_its_date(
    emulator: AmazonEmulator, kind: str
) -> None:
    """The account was stored by another process: the first refresh here finds it due.
    An async hook may use the manager for that very account without a deadlock."""
    granted = time.time() - 350 * DAY
    store = MemoryTokenStore()
    await store.save(
        "acme", Token("", emulator.issue_refresh_token("acme"), 0.0, authorized_at=granted)
    )
    seen: list[tuple[str, float, str]] = []

    def sync_hook(account_id: str, due: float) -> None:
        seen.append((account_id, due, "sync"))

    async def async_hook(account_id: str, due: float) -> None:
        await mgr.refresh(account_id)  # the refresh that found it has ended by now
        seen.append((account_id, due, "async"))

    async with manager(
        emulator,
        store,
        authorization_max_age=YEAR,
        on_reauth_due=sync_hook if kind == "sync" else async_hook,
    ) as mgr:
        assert await mgr.get_access_token("acme")
        if kind == "sync":
            assert seen == [("acme", granted + YEAR, "sync")]
        await wait_for(lambda: seen)
        await mgr.refresh("acme")
        await asyncio.sleep(0.05)
    assert seen == [("acme", granted + YEAR, kind)]
