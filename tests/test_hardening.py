"""Hardening: no secret in any exception chain, server text redacted, stores that refuse
what they cannot trust, and a manager that refuses a store that is not one."""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import shutil
import stat
import subprocess
import tempfile
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import keyring
import keyring.backends.chainer
import keyring.backends.fail
import pytest
from keyring.backend import KeyringBackend

import aioamztoken as at
from aioamztoken import RedactingFilter
from aioamztoken._logging import redact
from aioamztoken.testing import AmazonEmulator
from tests._secrets import assert_no_secret_in, assert_no_secret_in_chain, chain

ACCESS = "Atza|an-access-token-that-is-secret"
REFRESH = "Atzr|a-refresh-token-that-is-secret"
# A refresh token of no known shape: only knowing the value can hide it.
PLAIN_REFRESH = "plain-refresh-token-6f1c2e"
CLIENT_SECRET = "client-secret-of-no-known-shape-93ab"
NOBODY = 65534


def token(refresh: str = REFRESH) -> at.Token:
    return at.Token(ACCESS, refresh, time.time() + 3600)


# ------------------------------------------------------------------ exception chains


def mangled(document: dict[str, object], how: str) -> bytes:
    data = json.dumps(document).encode()
    if how == "truncated":  # json's error then holds the whole text as .doc
        return data[:-3]
    if how == "not-utf8":  # the decode error holds the bytes
        return data + b"\xff"
    return data  # "bad-record": the token fields are in the parsed data


@pytest.mark.parametrize("how", ["truncated", "not-utf8", "bad-record"])
@pytest.mark.parametrize("kind", ["file", "dir"])
async def test_a_corrupt_store_file_carries_no_token_in_its_chain(
    tmp_path: Path, how: str, kind: str
) -> None:
    record: dict[str, object] = {"access_token": ACCESS, "refresh_token": PLAIN_REFRESH}
    record["expires_at"] = "soon" if how == "bad-record" else 1.0
    if kind == "file":
        path = tmp_path / "tokens.json"
        store: at.TokenStore = at.FileTokenStore(path)
        document: dict[str, object] = {"format": "aioamztoken/1", "accounts": {"a": record}}
    else:
        (tmp_path / "d").mkdir()
        path = tmp_path / "d" / "a.json"
        store = at.DirectoryTokenStore(tmp_path / "d")
        document = {"format": "aioamztoken/1", "account_id": "a", "token": record}
    data = mangled(document, how)
    path.write_bytes(data)
    with pytest.raises(at.StorageError) as caught:
        await store.load("a")
    assert_no_secret_in_chain(caught.value, [ACCESS, PLAIN_REFRESH])
    assert path.read_bytes() == data


async def test_an_encrypted_store_that_cannot_be_read_carries_no_token_or_key(
    tmp_path: Path,
) -> None:
    key, other = (
        at.EncryptedFileTokenStore.generate_key(),
        at.EncryptedFileTokenStore.generate_key(),
    )
    path = tmp_path / "t.enc"
    await at.EncryptedFileTokenStore(path, key=key).save("a", token(PLAIN_REFRESH))
    with pytest.raises(at.DecryptionError) as wrong_key:
        await at.EncryptedFileTokenStore(path, key=other).load("a")
    assert_no_secret_in_chain(wrong_key.value, [key, other, PLAIN_REFRESH])
    # Decrypted but not a document: the plaintext (tokens) must not ride on the chain.
    cipher = at.stores.TokenCipher(key)
    path.write_bytes(cipher.encrypt(f'{{"refresh_token": "{PLAIN_REFRESH}", '.encode()))
    with pytest.raises(at.StorageError) as garbled:
        await at.EncryptedFileTokenStore(path, key=key).load("a")
    assert_no_secret_in_chain(garbled.value, [key, PLAIN_REFRESH])


@contextlib.asynccontextmanager
async def hang_up_server() -> AsyncIterator[str]:
    """A loopback server that reads a request and closes the connection unanswered."""

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        with contextlib.suppress(Exception):
            await reader.read(65536)
        writer.close()

    server = await asyncio.start_server(handle, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    try:
        yield f"http://127.0.0.1:{port}/auth/o2/token"
    finally:
        server.close()
        await server.wait_closed()


def closed_port_url() -> str:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    return f"http://127.0.0.1:{port}/auth/o2/token"


async def test_aiohttp_errors_during_token_requests_carry_no_secret(
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.DEBUG, logger="aioamztoken")
    async with hang_up_server() as hang_up:
        for url in (closed_port_url(), hang_up):
            store = at.MemoryTokenStore()
            await store.save("a", at.Token("", PLAIN_REFRESH, 0.0))
            async with at.AsyncTokenManager(
                "client-id", CLIENT_SECRET, store=store, token_url=url, max_retries=2
            ) as mgr:
                with pytest.raises(at.TokenEndpointError) as caught:
                    await mgr.get_access_token("a")
                status = await mgr.status("a")
            assert_no_secret_in_chain(caught.value, [CLIENT_SECRET, PLAIN_REFRESH])
            names = [type(e).__name__ for e in chain(caught.value)]
            assert "ScrubbedError" in names  # the failure type is still named
            assert_no_secret_in(str(status.last_error), [CLIENT_SECRET, PLAIN_REFRESH])
    assert_no_secret_in(caplog.text, [CLIENT_SECRET, PLAIN_REFRESH])


@pytest.mark.parametrize(
    ("status", "error", "expected"),
    [
        (400, "invalid_grant", at.InvalidGrantError),
        (401, "invalid_client", at.InvalidClientError),
        (400, "invalid_request", at.TokenRefreshError),
        (503, "server_error", at.TokenEndpointError),
    ],
)
async def test_endpoint_error_text_echoing_secrets_is_redacted_everywhere(
    emulator: AmazonEmulator,
    caplog: pytest.LogCaptureFixture,
    status: int,
    error: str,
    expected: type[Exception],
) -> None:
    caplog.set_level(logging.DEBUG, logger="aioamztoken")
    store = at.MemoryTokenStore()
    secret = "secret-of-this-test-51d7"
    refresh = "refresh-token-of-this-test-0c3e"
    await store.save("a", at.Token(ACCESS, refresh, time.time() + 3600))
    echo = f"you sent refresh_token {refresh} with client_secret {secret}, {error} {refresh}"
    body = json.dumps({"error": error, "error_description": echo})
    emulator.fail_next(3, status=status, body=body)
    async with at.AsyncTokenManager(
        emulator.client_id, secret, store=store, token_url=emulator.token_url, max_retries=1
    ) as mgr:
        assert await mgr.get_access_token("a") == ACCESS  # cached: the failure is recorded
        with pytest.raises(expected) as caught:
            await mgr.refresh("a")
        last_error = (await mgr.status("a")).last_error
    assert "[redacted]" in str(caught.value)  # the server's words, minus the secrets
    assert_no_secret_in_chain(caught.value, [secret, refresh])
    assert last_error is not None
    assert_no_secret_in(last_error, [secret, refresh])
    assert_no_secret_in(caplog.text, [secret, refresh])


async def test_a_code_and_verifier_echoed_by_the_endpoint_are_redacted(
    emulator: AmazonEmulator, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG, logger="aioamztoken")
    code = "ANcode-of-this-test-aa81"
    verifier = "verifier-of-this-test-" + "v" * 30
    echo = f"code {code} used, verifier {verifier}"
    emulator.fail_next(
        1, status=400, body=json.dumps({"error": "invalid_grant", "error_description": echo})
    )
    async with at.AsyncTokenManager(
        emulator.client_id,
        emulator.client_secret,
        store=at.MemoryTokenStore(),
        token_url=emulator.token_url,
    ) as mgr:
        with pytest.raises(at.InvalidGrantError) as caught:
            await mgr.exchange_code(
                "a", code, redirect_uri="http://127.0.0.1:1/cb", code_verifier=verifier
            )
    assert_no_secret_in_chain(caught.value, [code, verifier, emulator.client_secret])
    assert_no_secret_in(caplog.text, [code, verifier, emulator.client_secret])
    # A dead endpoint during the exchange: aiohttp's error carries nothing either.
    async with at.AsyncTokenManager(
        emulator.client_id,
        emulator.client_secret,
        store=at.MemoryTokenStore(),
        token_url=closed_port_url(),
        max_retries=1,
    ) as mgr:
        with pytest.raises(at.TokenEndpointError) as dead:
            await mgr.exchange_code(
                "a", code, redirect_uri="http://127.0.0.1:1/cb", code_verifier=verifier
            )
    assert_no_secret_in_chain(dead.value, [code, verifier, emulator.client_secret])


async def test_redis_errors_carry_no_password() -> None:
    pytest.importorskip("redis")
    password = "redis-password-7e21"
    url = closed_port_url().replace("http://", f"redis://:{password}@").split("/auth")[0]
    store = at.open_store(url)
    try:
        with pytest.raises(at.StorageError) as caught:
            await store.load("a")
    finally:
        await store.aclose()  # type: ignore[attr-defined]
    assert_no_secret_in_chain(caught.value, [password])


class _ExplodingKeyring(KeyringBackend):
    """A backend whose every failure quotes what it was given, as some do."""

    priority = 5  # type: ignore[assignment]

    def get_password(self, service: str, username: str) -> str | None:
        return None

    def set_password(self, service: str, username: str, password: str) -> None:
        raise RuntimeError(f"could not store {password!r}")

    def delete_password(self, service: str, username: str) -> None:
        raise RuntimeError("nothing to delete")


async def test_keyring_backend_errors_carry_no_token(tmp_path: Path) -> None:
    store = at.KeyringTokenStore("svc", backend=_ExplodingKeyring(), lock_dir=tmp_path)
    with pytest.raises(at.StorageError) as caught:
        await store.save("a", token(PLAIN_REFRESH))
    assert_no_secret_in_chain(caught.value, [PLAIN_REFRESH, ACCESS])
    assert "RuntimeError" in str(caught.value)


class _TalkativeStore(at.MemoryTokenStore):
    """A user-written store whose errors quote the token it was handling, as some do."""

    async def load(self, account_id: str) -> at.Token | None:
        raise RuntimeError(f"backend rejected {PLAIN_REFRESH}")

    async def accounts(self) -> list[str]:
        raise RuntimeError(f"listing failed near {PLAIN_REFRESH}")


async def test_errors_of_a_user_written_store_reach_no_chain() -> None:
    store = _TalkativeStore()
    async with at.AsyncTokenManager("id", CLIENT_SECRET, store=store) as mgr:
        for attempt in (mgr.get_access_token("a"), mgr.accounts()):
            with pytest.raises(at.StorageError) as caught:
                await attempt
            assert_no_secret_in_chain(caught.value, [PLAIN_REFRESH])
            assert "RuntimeError" in str(caught.value)
    with pytest.raises(at.StorageError) as listing:
        await at.stores.migrate(store, at.MemoryTokenStore())
    assert_no_secret_in_chain(listing.value, [PLAIN_REFRESH])


def test_the_chain_helper_finds_a_secret_on_a_hidden_context() -> None:
    """The helper itself: a secret on a suppressed __context__ is found."""
    try:
        try:
            json.loads('{"refresh_token": "' + PLAIN_REFRESH + '"')
        except ValueError:
            raise at.StorageError("corrupt") from None
    except at.StorageError as exc:
        with pytest.raises(AssertionError, match="JSONDecodeError"):
            assert_no_secret_in_chain(exc, [PLAIN_REFRESH])


# ------------------------------------------------------------------ RedactingFilter


@pytest.mark.parametrize(
    "message",
    [
        "POST body: code=%(code)s&grant_type=authorization_code",
        "POST body: refresh_token=%(refresh)s&client_id=x",
        "POST body: grant_type=refresh_token&client_secret=%(secret)s",
        'answer: {"refresh_token": "%(refresh)s", "access_token": "%(access)s"}',
        'request: {"code": "%(code)s", "redirect_uri": "http://127.0.0.1/cb"}',
        "GET http://127.0.0.1:8765/callback?code=%(code)s&state=s",
        "GET https://example.com/cb?state=s&code=%(code)s",
        "headers: {'Authorization': 'Bearer %(access)s'}",
        "headers: {'x-amz-access-token': '%(access)s'}",
        "Authorization: Basic %(secret)s",
        "x-amz-access-token: %(access)s",
    ],
)
def test_redacting_filter_masks_every_form(message: str) -> None:
    values = {
        "code": "ANcodeSecretValue123",
        "refresh": "refresh-of-no-shape-42",
        "secret": "Y2xpZW50OnNlY3JldA==",
        "access": "access-of-no-shape-77",
    }
    record = logging.LogRecord("x", logging.INFO, __file__, 1, message % values, None, None)
    assert RedactingFilter().filter(record)
    shown = record.getMessage()
    assert "[redacted]" in shown
    for value in values.values():
        assert value not in shown, shown


@pytest.mark.parametrize(
    "harmless", ["status code: 400", "error_code=12", "state=abc", "grant_type=refresh_token"]
)
def test_redaction_leaves_harmless_text_alone(harmless: str) -> None:
    assert redact(harmless) == harmless


# ------------------------------------------------------------------ store= is checked


@pytest.mark.parametrize("bad", ["memory://", "file:///tmp/x.json", 42, None, at.MemoryTokenStore])
def test_a_manager_refuses_a_store_that_is_not_one(bad: object) -> None:
    with pytest.raises(TypeError, match=r"open_store\(") as caught:
        at.AsyncTokenManager("id", "secret", store=bad)  # type: ignore[arg-type]
    if isinstance(bad, str):
        assert f"open_store({bad!r})" in str(caught.value)


def test_a_blocking_manager_refuses_a_url_too() -> None:
    with pytest.raises(TypeError, match=r"open_store\('memory://'\)"):
        at.BlockingTokenManager("id", "secret", store="memory://")  # type: ignore[arg-type]


# ------------------------------------------------------------------ files of another user

needs_root = pytest.mark.skipif(
    os.geteuid() != 0, reason="needs root to act as a second user (uid 65534) in a child"
)


@pytest.fixture
def shared_dir() -> Iterator[Path]:
    """A world-writable sticky directory, like /tmp, where another user can plant files."""
    path = Path(tempfile.mkdtemp(prefix="aioamztoken-shared-"))
    path.chmod(0o1777)
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


def as_nobody(script: str, **env: str) -> None:
    """Run the shell ``script`` in a child process that is really another user (uid 65534).

    A shell, not this venv's Python, which that user may not be allowed to run."""
    done = subprocess.run(
        ["/bin/sh", "-c", script],
        user=NOBODY,
        group=NOBODY,
        extra_groups=[],
        env={"PATH": "/usr/bin:/bin", **env},
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
        cwd="/",
    )
    assert done.returncode == 0, done.stderr


@pytest.mark.seconduser
@needs_root
async def test_a_token_file_planted_by_another_user_is_refused(shared_dir: Path) -> None:
    path = shared_dir / "tokens.json"
    planted = json.dumps(
        {"format": "aioamztoken/1", "accounts": {"a": token(PLAIN_REFRESH).to_dict()}}
    )
    as_nobody('umask 022; printf %s "$DATA" > "$TARGET"', DATA=planted, TARGET=str(path))
    assert path.stat().st_uid == NOBODY
    store = at.FileTokenStore(path)
    for attempt in (store.load("a"), store.accounts(), store.save("a", token())):
        with pytest.raises(at.StorageError, match="owned by another user") as caught:
            await attempt
        assert str(path) in str(caught.value)
    assert path.read_text() == planted  # not used, not touched
    assert_no_secret_in_chain(caught.value, [PLAIN_REFRESH])


@pytest.mark.seconduser
@needs_root
async def test_a_lock_directory_planted_by_another_user_is_refused(shared_dir: Path) -> None:
    locks = shared_dir / ".tokens.json.locks"
    as_nobody('mkdir -m 777 "$TARGET"', TARGET=str(locks))
    store = at.FileTokenStore(shared_dir / "tokens.json")
    with pytest.raises(at.StorageError, match="owned by another user") as caught:
        await store.save("a", token())
    assert str(locks) in str(caught.value)
    with pytest.raises(at.StorageError, match="owned by another user"):
        async with store.lock("a"):
            pass
    assert not (shared_dir / "tokens.json").exists()
    assert list(locks.iterdir()) == []  # no lock file of ours in their directory


@pytest.mark.seconduser
@needs_root
async def test_a_directory_store_file_of_another_user_is_refused(shared_dir: Path) -> None:
    store_dir = shared_dir / "accounts"
    store_dir.mkdir(mode=0o700)
    path = store_dir / "a.json"
    path.write_bytes(at.stores._codec.encode_account("a", token(PLAIN_REFRESH)))
    os.chown(path, NOBODY, NOBODY)
    store = at.DirectoryTokenStore(store_dir)
    with pytest.raises(at.StorageError, match="owned by another user"):
        await store.load("a")


async def test_a_lock_file_that_is_a_symlink_is_refused(tmp_path: Path) -> None:
    store = at.FileTokenStore(tmp_path / "tokens.json")
    await store.save("a", token())
    target = tmp_path / "victim"
    target.write_text("keep me")
    lock_dir = tmp_path / ".tokens.json.locks"
    (lock_dir / "file.lock").unlink()
    (lock_dir / "file.lock").symlink_to(target)
    with pytest.raises(at.StorageError, match="symlink") as caught:
        await store.save("b", token())
    assert "file.lock" in str(caught.value)
    assert target.read_text() == "keep me"
    assert await store.accounts() == ["a"]


async def test_a_lock_directory_that_is_a_symlink_is_refused(tmp_path: Path) -> None:
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    (tmp_path / "d").mkdir()
    (tmp_path / "d" / ".locks").symlink_to(elsewhere)
    store = at.DirectoryTokenStore(tmp_path / "d")
    with pytest.raises(at.StorageError, match="symlink"):
        async with store.lock("a"):
            pass
    assert list(elsewhere.iterdir()) == []


async def test_a_token_file_others_can_read_is_used_with_a_warning_then_made_private(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    path = tmp_path / "tokens.json"
    await at.FileTokenStore(path).save("a", token())
    path.chmod(0o644)
    caplog.set_level(logging.WARNING, logger="aioamztoken")
    store = at.FileTokenStore(path)
    loaded = await store.load("a")
    assert loaded is not None
    assert loaded.refresh_token == REFRESH
    warnings = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1  # once, not at every read
    assert str(path) in warnings[0].getMessage()
    assert "644" in warnings[0].getMessage()
    assert stat.S_IMODE(path.stat().st_mode) == 0o644  # a read changes nothing
    await store.save("b", token())
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert sorted(await store.accounts()) == ["a", "b"]
    assert_no_secret_in(caplog.text, [ACCESS, REFRESH])


async def test_a_save_of_an_unchanged_token_still_makes_a_readable_file_private(
    tmp_path: Path,
) -> None:
    path = tmp_path / "tokens.json"
    await at.FileTokenStore(path).save("a", token())
    same = await at.FileTokenStore(path).load("a")
    assert same is not None
    path.chmod(0o640)
    store = at.FileTokenStore(path)
    await store.save("a", same)
    assert stat.S_IMODE(path.stat().st_mode) == 0o600


# ------------------------------------------------------------------ keyring backends


class _LowPriorityKeyring(KeyringBackend):
    """A real backend (in memory) that declares itself unfit: priority 0.5."""

    priority = 0.5  # type: ignore[assignment]

    def __init__(self) -> None:
        super().__init__()
        self.entries: dict[tuple[str, str], str] = {}

    def get_password(self, service: str, username: str) -> str | None:
        return self.entries.get((service, username))

    def set_password(self, service: str, username: str, password: str) -> None:
        self.entries[(service, username)] = password

    def delete_password(self, service: str, username: str) -> None:
        self.entries.pop((service, username), None)


class _GoodKeyring(_LowPriorityKeyring):
    priority = 5  # type: ignore[assignment]


def plaintext(path: Path) -> KeyringBackend:
    """keyrings.alt's plaintext file keyring (the insecure-test-keyring extra) at ``path``."""
    module = pytest.importorskip(
        "keyrings.alt.file", reason="needs the insecure-test-keyring extra (keyrings.alt)"
    )
    backend = module.PlaintextKeyring()
    backend.file_path = str(path)
    return backend


@pytest.mark.parametrize(
    ("make", "named"),
    [
        (lambda p: plaintext(p / "k.cfg"), "keyrings.alt.file.PlaintextKeyring"),
        (lambda p: keyring.backends.fail.Keyring(), "keyring.backends.fail.Keyring"),
        (lambda p: _LowPriorityKeyring(), "_LowPriorityKeyring"),
    ],
)
async def test_keyring_store_refuses_insecure_backends_on_first_use(
    tmp_path: Path, make: object, named: str
) -> None:
    backend = make(tmp_path)  # type: ignore[operator]
    store = at.KeyringTokenStore("svc", backend=backend, lock_dir=tmp_path / "locks")
    for attempt in (store.save("a", token()), store.load("a"), store.accounts()):
        with pytest.raises(at.StorageError) as caught:
            await attempt
        assert named in str(caught.value)
        assert "allow_insecure_backend=True" in str(caught.value)
    if type(backend).__name__ == "PlaintextKeyring":
        assert not (tmp_path / "k.cfg").exists()  # nothing was written
    if isinstance(backend, _LowPriorityKeyring):
        assert backend.entries == {}


async def test_the_opt_in_uses_an_insecure_backend(tmp_path: Path) -> None:
    backend = plaintext(tmp_path / "k.cfg")
    store = at.KeyringTokenStore(
        "svc", backend=backend, lock_dir=tmp_path / "locks", allow_insecure_backend=True
    )
    await store.save("a", token())
    loaded = await store.load("a")
    assert loaded is not None
    assert loaded.refresh_token == REFRESH
    assert (tmp_path / "k.cfg").exists()
    via_url = at.open_store("keyring://svc?allow_insecure_backend=1")
    assert via_url.allow_insecure_backend is True  # type: ignore[attr-defined]
    assert at.open_store("keyring://svc").allow_insecure_backend is False  # type: ignore[attr-defined]
    with pytest.raises(ValueError, match="allow_insecure_backend"):
        at.open_store("keyring://svc?allow_insecure_backend=maybe")


async def test_a_recommended_backend_is_used_without_opting_in(tmp_path: Path) -> None:
    backend = _GoodKeyring()
    store = at.KeyringTokenStore("svc", backend=backend, lock_dir=tmp_path / "locks")
    await store.save("a", token())
    assert await store.accounts() == ["a"]
    assert backend.entries


async def test_the_process_keyring_is_checked_too(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(keyring.core, "_keyring_backend", keyring.core._keyring_backend)
    keyring.set_keyring(plaintext(tmp_path / "k.cfg"))
    store = at.KeyringTokenStore("svc", lock_dir=tmp_path / "locks")
    with pytest.raises(at.StorageError, match="PlaintextKeyring"):
        await store.save("a", token())
    assert not (tmp_path / "k.cfg").exists()


async def test_a_chain_holding_a_plaintext_backend_is_refused(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    good, bad = _GoodKeyring(), plaintext(tmp_path / "k.cfg")
    monkeypatch.setattr(keyring.backends.chainer.ChainerBackend, "backends", [good, bad])
    store = at.KeyringTokenStore(
        "svc", backend=keyring.backends.chainer.ChainerBackend(), lock_dir=tmp_path / "locks"
    )
    with pytest.raises(at.StorageError, match=r"chains to keyrings\.alt\.file\.PlaintextKeyring"):
        await store.save("a", token())
    assert good.entries == {}
