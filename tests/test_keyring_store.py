"""The keyring store, against real backends: keyrings.alt's file keyring everywhere, and the
Secret Service (gnome-keyring over D-Bus) where a session bus offers it."""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import tempfile
import threading
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import keyring
import keyring.backends.fail
import keyring.core
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from keyring.backend import KeyringBackend

import aioamztoken as at
from aioamztoken import AsyncTokenManager, StorageError, Token
from aioamztoken._scrub import ScrubbedError
from aioamztoken.stores import KeyringTokenStore, LockingTokenStore
from aioamztoken.stores._codec import encode_account, encode_index, lock_name
from aioamztoken.testing import AmazonEmulator
from tests.test_store_processes import child, expect, tell, token_for

# keyrings.alt comes with the insecure-test-keyring extra (never with "test"): see pyproject.
PlaintextKeyring = pytest.importorskip(
    "keyrings.alt.file", reason="needs the insecure-test-keyring extra (keyrings.alt)"
).PlaintextKeyring

ACCESS = "Atza|SECRET-ACCESS-VALUE"
REFRESH = "Atzr|SECRET-REFRESH-VALUE"
TOKEN = Token(ACCESS, REFRESH, 1_700_000_000.5, scope="advertising::campaign_management")
SERVICE = "aioamztoken-test"
WEIRD_IDS = [
    "nul\x00byte",
    "line\nbreak",
    "ünïcødé-账户-🚀",
    "a/b",
    "x" * 500,
    "index",
    "[section]",
]


def token(n: int) -> Token:
    return Token(f"Atza|access-{n}", f"Atzr|refresh-{n}", 1_700_000_000.0 + n)


def file_keyring(path: Path) -> PlaintextKeyring:
    backend = PlaintextKeyring()
    backend.file_path = str(path)  # an instance attribute: keyrings.alt allows it
    return backend


@pytest.fixture
def data_home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A private user data directory: default lock directories and keyring files go there."""
    monkeypatch.setenv("XDG_DATA_HOME", str(tmp_path / "data"))
    return tmp_path / "data"


@pytest.fixture
def backend(data_home: Path, monkeypatch: pytest.MonkeyPatch) -> PlaintextKeyring:
    """A real file-backed keyring in tmp_path, made the process's keyring for the test."""
    chosen = PlaintextKeyring()
    assert chosen.file_path.startswith(str(data_home))
    # monkeypatch puts back whatever keyring the process had once the test is over.
    monkeypatch.setattr(keyring.core, "_keyring_backend", keyring.core._keyring_backend)
    keyring.set_keyring(chosen)
    return chosen


@pytest.fixture
def store(backend: PlaintextKeyring) -> KeyringTokenStore:
    return KeyringTokenStore(SERVICE, allow_insecure_backend=True)


def entry(backend: KeyringBackend, name: str, service: str = SERVICE) -> str | None:
    value: str | None = backend.get_password(service, name)
    return value


# ------------------------------------------------------------------------------ behaviour


def test_the_store_is_exported_and_offers_a_lock(tmp_path: Path) -> None:
    assert at.KeyringTokenStore is KeyringTokenStore
    store = KeyringTokenStore(lock_dir=tmp_path, allow_insecure_backend=True)
    assert isinstance(store, LockingTokenStore)
    assert store.service == "aioamztoken"
    assert repr(store) == "KeyringTokenStore('aioamztoken')"
    with pytest.raises(ValueError, match="service"):
        KeyringTokenStore("")


async def test_tokens_round_trip_through_the_process_keyring(store: KeyringTokenStore) -> None:
    assert await store.accounts() == []
    assert await store.load("acct") is None
    await store.save("acct", TOKEN)
    await store.save("other", token(2))
    await store.save("acct", token(3))
    assert await store.load("acct") == token(3)
    assert await store.accounts() == ["acct", "other"]
    await store.delete("acct")
    await store.delete("absent")
    assert await store.load("acct") is None
    assert await store.accounts() == ["other"]
    assert await KeyringTokenStore(SERVICE, allow_insecure_backend=True).load("other") == token(2)


async def test_one_entry_per_account_plus_an_index(
    store: KeyringTokenStore, backend: PlaintextKeyring
) -> None:
    await store.save("acct", TOKEN)
    await store.save("other", token(2))
    assert entry(backend, lock_name("acct")) == encode_account("acct", TOKEN).decode()
    assert entry(backend, "index") == encode_index(["acct", "other"]).decode()
    await store.delete("acct")
    assert entry(backend, lock_name("acct")) is None
    assert entry(backend, "index") == encode_index(["other"]).decode()


async def test_any_account_id_round_trips_and_stays_distinct(store: KeyringTokenStore) -> None:
    for n, account_id in enumerate(WEIRD_IDS):
        await store.save(account_id, token(n))
    assert await store.accounts() == sorted(WEIRD_IDS)
    for n, account_id in enumerate(WEIRD_IDS):
        assert await store.load(account_id) == token(n)


async def test_services_are_separate(backend: PlaintextKeyring) -> None:
    one, two = (
        KeyringTokenStore("one", allow_insecure_backend=True),
        KeyringTokenStore("two", allow_insecure_backend=True),
    )
    await one.save("acct", token(1))
    assert await two.load("acct") is None
    assert await two.accounts() == []


async def test_an_explicit_backend_is_used_instead_of_the_process_keyring(
    tmp_path: Path, backend: PlaintextKeyring
) -> None:
    own = file_keyring(tmp_path / "own.cfg")
    store = KeyringTokenStore(
        SERVICE, backend=own, lock_dir=tmp_path / "locks", allow_insecure_backend=True
    )
    await store.save("acct", TOKEN)
    assert entry(own, lock_name("acct")) is not None
    assert entry(backend, lock_name("acct")) is None


class ThreadRecordingKeyring(PlaintextKeyring):
    """The file keyring, noting the thread of every call."""

    def __init__(self) -> None:
        super().__init__()
        self.threads: set[int] = set()

    def get_password(self, service: str, username: str) -> Any:
        self.threads.add(threading.get_ident())
        return super().get_password(service, username)

    def set_password(self, service: str, username: str, password: str) -> None:
        self.threads.add(threading.get_ident())
        super().set_password(service, username, password)


async def test_keyring_calls_run_in_worker_threads_never_on_the_event_loop(
    tmp_path: Path,
) -> None:
    recording = ThreadRecordingKeyring()
    recording.file_path = str(tmp_path / "k.cfg")
    store = KeyringTokenStore(
        SERVICE, backend=recording, lock_dir=tmp_path / "locks", allow_insecure_backend=True
    )
    await store.save("acct", TOKEN)
    assert await store.load("acct") == TOKEN
    assert await store.accounts() == ["acct"]
    assert recording.threads
    assert threading.get_ident() not in recording.threads


async def test_100_concurrent_saves_lose_no_account_from_the_index(
    store: KeyringTokenStore,
) -> None:
    await asyncio.gather(*(store.save(f"acct-{i}", token(i)) for i in range(100)))
    assert await store.accounts() == sorted(f"acct-{i}" for i in range(100))
    await asyncio.gather(*(store.delete(f"acct-{i}") for i in range(0, 100, 2)))
    assert await store.accounts() == sorted(f"acct-{i}" for i in range(1, 100, 2))


async def test_a_lock_excludes_a_second_holder_and_not_other_accounts(
    store: KeyringTokenStore,
) -> None:
    async def enter(account_id: str) -> None:
        async with KeyringTokenStore(SERVICE, allow_insecure_backend=True).lock(account_id):
            pass

    async with store.lock("a"):
        with pytest.raises(asyncio.TimeoutError):
            await asyncio.wait_for(enter("a"), 0.2)
        await asyncio.wait_for(enter("b"), 2)
        await store.save("a", TOKEN)  # saves never take the account's lock
    await asyncio.wait_for(enter("a"), 2)


async def test_the_manager_refreshes_through_a_keyring_store(
    store: KeyringTokenStore, emulator: AmazonEmulator
) -> None:
    async with AsyncTokenManager(
        emulator.client_id, emulator.client_secret, store=store, token_url=emulator.token_url
    ) as mgr:
        await mgr.add_account("acct", emulator.issue_refresh_token("acct"))
        tokens = await asyncio.gather(*(mgr.get_access_token("acct") for _ in range(20)))
    assert set(tokens) == {emulator.current_access_token("acct")}
    assert emulator.token_requests == 1
    stored = await store.load("acct")
    assert stored is not None
    assert stored.access_token == tokens[0]


# ------------------------------------------------------------------------------ failures


def assert_refused(err: pytest.ExceptionInfo[StorageError], where: str) -> None:
    message = str(err.value)
    assert err.value.location is not None
    assert where in err.value.location
    assert SERVICE in message
    for secret in (ACCESS, REFRESH, "Atza", "Atzr"):
        assert secret not in message


async def test_an_unreadable_entry_is_a_storage_error_and_never_overwritten(
    store: KeyringTokenStore, backend: PlaintextKeyring
) -> None:
    await store.save("good", token(1))
    backend.set_password(SERVICE, lock_name("acct"), '{"format": "aioamztoken/1", "token": 1}')
    for attempt in (store.load("acct"), store.save("acct", token(2)), store.delete("acct")):
        with pytest.raises(StorageError) as err:
            await attempt
        assert_refused(err, lock_name("acct"))
        assert "'acct'" in str(err.value)  # the account is named
    assert entry(backend, lock_name("acct")) == '{"format": "aioamztoken/1", "token": 1}'
    assert await store.load("good") == token(1)  # other accounts are unaffected
    assert await store.accounts() == ["good"]


async def test_an_entry_holding_another_account_is_refused(
    store: KeyringTokenStore, backend: PlaintextKeyring
) -> None:
    backend.set_password(SERVICE, lock_name("bob"), encode_account("alice", TOKEN).decode())
    for attempt in (store.load("bob"), store.save("bob", token(1)), store.delete("bob")):
        with pytest.raises(StorageError, match="another account"):
            await attempt
    assert entry(backend, lock_name("bob")) == encode_account("alice", TOKEN).decode()


async def test_an_unreadable_index_is_a_storage_error_and_never_overwritten(
    store: KeyringTokenStore, backend: PlaintextKeyring
) -> None:
    await store.save("acct", TOKEN)
    backend.set_password(SERVICE, "index", "not json")
    for attempt in (store.accounts(), store.save("new", token(1)), store.delete("acct")):
        with pytest.raises(StorageError) as err:
            await attempt
        assert_refused(err, "index")
    assert entry(backend, "index") == "not json"
    assert entry(backend, lock_name("new")) is None  # nothing written past the index
    assert await store.load("acct") == TOKEN  # loads need no index


async def test_a_keyring_that_cannot_work_is_a_storage_error(tmp_path: Path) -> None:
    store = KeyringTokenStore(
        SERVICE,
        backend=keyring.backends.fail.Keyring(),
        lock_dir=tmp_path / "locks",
        allow_insecure_backend=True,
    )
    for attempt in (store.load("acct"), store.save("acct", TOKEN), store.accounts()):
        with pytest.raises(StorageError, match="NoKeyringError") as err:
            await attempt
        # The backend's error is kept only as a scrubbed stand-in naming its type.
        assert isinstance(err.value.__cause__, ScrubbedError)
        assert err.value.__cause__.type_name == "keyring.errors.NoKeyringError"


async def test_a_backend_failing_with_an_os_error_is_a_storage_error(tmp_path: Path) -> None:
    (tmp_path / "a-directory").mkdir()
    store = KeyringTokenStore(
        SERVICE,
        backend=file_keyring(tmp_path / "a-directory"),
        lock_dir=tmp_path / "locks",
        allow_insecure_backend=True,
    )
    with pytest.raises(StorageError, match="could not write") as err:
        await store.save("acct", TOKEN)
    assert isinstance(err.value.__cause__, ScrubbedError)
    assert err.value.__cause__.type_name == "IsADirectoryError"


async def test_an_unwritable_lock_directory_is_a_storage_error(backend: PlaintextKeyring) -> None:
    store = KeyringTokenStore(
        SERVICE, lock_dir="/proc/aioamztoken-test/locks", allow_insecure_backend=True
    )
    with pytest.raises(StorageError, match="/proc/aioamztoken-test"):
        await store.save("acct", TOKEN)
    assert entry(backend, lock_name("acct")) is None


@settings(
    max_examples=100, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(
    name=st.sampled_from(["entry", "index"]),
    value=st.one_of(
        st.text(max_size=200),
        st.binary(max_size=100).map(lambda b: b.decode("latin-1")),
        st.sampled_from(
            [
                encode_account("acct", TOKEN).decode()[:-20],
                encode_account("acct", TOKEN).decode().replace("1700000000.5", '"soon"'),
                encode_index(["acct"]).decode().replace('"acct"', '""'),
                encode_index(["acct"]).decode().replace('"acct"', '"acct", "acct"'),
                encode_index(["acct"]).decode().replace('["acct"]', '{"acct": 1}'),
                '{"format": "aioamztoken/1", "index": ["acct"], "more": 1}',
            ]
        ),
    ),
)
def test_any_text_in_an_entry_loads_or_raises_storage_error_and_is_never_overwritten(
    name: str, value: str
) -> None:
    async def scenario(base: Path) -> None:
        backend = file_keyring(base / "keyring.cfg")
        store = KeyringTokenStore(
            SERVICE, backend=backend, lock_dir=base / "locks", allow_insecure_backend=True
        )
        username = lock_name("acct") if name == "entry" else "index"
        backend.set_password(SERVICE, username, value)
        read = store.load("acct") if name == "entry" else store.accounts()
        refused: StorageError | None = None
        try:
            await read
        except StorageError as exc:
            refused = exc
        if refused is not None:
            assert ACCESS not in str(refused)
            assert REFRESH not in str(refused)
            for attempt in (store.save("acct", token(1)), store.delete("acct")):
                with pytest.raises(StorageError):
                    await attempt
            assert entry(backend, username) == value
        else:
            await store.save("acct", token(1))
            assert await store.load("acct") == token(1)
            assert "acct" in await store.accounts()

    with tempfile.TemporaryDirectory() as base:
        asyncio.run(scenario(Path(base)))


# ------------------------------------------------------------------------------ processes


@contextlib.contextmanager
def children_use_the_file_keyring(data_home: Path) -> Iterator[None]:
    """Children inherit XDG_DATA_HOME (keyring file and lock directory) and the backend."""
    os.environ["PYTHON_KEYRING_BACKEND"] = "keyrings.alt.file.PlaintextKeyring"
    try:
        yield
    finally:
        del os.environ["PYTHON_KEYRING_BACKEND"]


async def test_4_processes_saving_10_accounts_each_lose_none_from_the_index(
    store: KeyringTokenStore, data_home: Path
) -> None:
    with children_use_the_file_keyring(data_home):
        async with contextlib.AsyncExitStack() as stack:
            procs = [
                await stack.enter_async_context(
                    child("save-many", "keyring", SERVICE, f"p{n}", "10")
                )
                for n in range(4)
            ]
            for proc in procs:
                await expect(proc, "ready")
            for proc in procs:
                tell(proc, "go")
            for proc in procs:
                await expect(proc, "done")
            for proc in procs:
                assert await proc.wait() == 0
    expected = sorted(f"p{n}-{i}" for n in range(4) for i in range(10))
    assert await store.accounts() == expected
    for account_id in expected:
        assert await store.load(account_id) == token_for(account_id, 1)


async def test_a_lock_held_by_a_killed_process_is_free_at_once(
    store: KeyringTokenStore, data_home: Path
) -> None:
    async def enter() -> None:
        async with store.lock("a"):
            pass

    with children_use_the_file_keyring(data_home):
        async with child("hold-lock", "keyring", SERVICE, "a") as proc:
            await expect(proc, "locked")
            with pytest.raises(asyncio.TimeoutError):
                await asyncio.wait_for(enter(), 0.2)
            proc.send_signal(signal.SIGKILL)
            assert await proc.wait() == -signal.SIGKILL
    await asyncio.wait_for(enter(), 1)


# ------------------------------------------------------------------------------ Secret Service

REQUIRE_SERVICES = os.environ.get("AIOAMZTOKEN_REQUIRE_SERVICES") == "1"
SECRET_SERVICE_RUN = os.environ.get("AIOAMZTOKEN_SECRET_SERVICE_RUN") == "1"
#: Every account id the tests below use: their entries are deleted after each test.
SECRET_SERVICE_IDS = ["acct", *WEIRD_IDS, *(f"acct-{i}" for i in range(30))]


@pytest.mark.secretservice
class TestSecretService:
    """The same store on the Secret Service, as Linux desktops have it.

    CI runs these in a second pytest run inside a private D-Bus session with an unlocked
    gnome-keyring, with AIOAMZTOKEN_SECRET_SERVICE_RUN=1 (see .ci/run); there, as in every
    run with AIOAMZTOKEN_REQUIRE_SERVICES=1, a skip fails. CI's main run has no such
    session, so it does not collect them. Elsewhere they skip without a session bus.
    """

    __test__ = SECRET_SERVICE_RUN or not REQUIRE_SERVICES

    @pytest.fixture
    def secret_service(self, tmp_path: Path) -> Iterator[KeyringTokenStore]:
        from keyring.backends import SecretService

        try:
            SecretService.Keyring.priority  # noqa: B018 (raises when unusable)
        except Exception as exc:
            pytest.skip(f"no Secret Service on a D-Bus session bus here: {exc}")
        backend = SecretService.Keyring()
        service = f"aioamztoken-test-{uuid.uuid4().hex}"
        yield KeyringTokenStore(service, backend=backend, lock_dir=tmp_path / "locks")
        for username in ["index", *(lock_name(a) for a in SECRET_SERVICE_IDS)]:
            with contextlib.suppress(keyring.errors.PasswordDeleteError):
                backend.delete_password(service, username)

    async def test_tokens_and_the_index_round_trip(self, secret_service: KeyringTokenStore) -> None:
        store = secret_service
        await store.save("acct", TOKEN)
        for n, account_id in enumerate(WEIRD_IDS):  # a NUL byte would break D-Bus
            await store.save(account_id, token(n))
        assert await store.load("acct") == TOKEN
        assert await store.accounts() == sorted(["acct", *WEIRD_IDS])
        for n, account_id in enumerate(WEIRD_IDS):
            assert await store.load(account_id) == token(n)
        await store.delete("acct")
        assert await store.load("acct") is None
        assert "acct" not in await store.accounts()

    async def test_concurrent_saves_lose_no_account(
        self, secret_service: KeyringTokenStore
    ) -> None:
        store = secret_service
        await asyncio.gather(*(store.save(f"acct-{i}", token(i)) for i in range(30)))
        assert await store.accounts() == sorted(f"acct-{i}" for i in range(30))
        assert await store.load("acct-29") == token(29)

    async def test_an_unreadable_entry_is_refused_and_kept(
        self, secret_service: KeyringTokenStore
    ) -> None:
        store = secret_service
        backend = store._backend
        assert backend is not None
        backend.set_password(store.service, lock_name("acct"), "garbage")
        for attempt in (store.load("acct"), store.save("acct", TOKEN), store.delete("acct")):
            with pytest.raises(StorageError):
                await attempt
        assert backend.get_password(store.service, lock_name("acct")) == "garbage"

    async def test_the_manager_refreshes_through_it(
        self, secret_service: KeyringTokenStore, emulator: AmazonEmulator
    ) -> None:
        async with AsyncTokenManager(
            emulator.client_id,
            emulator.client_secret,
            store=secret_service,
            token_url=emulator.token_url,
        ) as mgr:
            await mgr.add_account("acct", emulator.issue_refresh_token("acct"))
            tokens = await asyncio.gather(*(mgr.get_access_token("acct") for _ in range(10)))
        assert set(tokens) == {emulator.current_access_token("acct")}
        assert emulator.token_requests == 1
