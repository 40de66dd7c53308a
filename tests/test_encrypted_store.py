"""The cipher and the encrypted file store: nothing readable on disk, nothing readable
without the key, no changed byte unnoticed, keys that rotate, and crash safety."""

from __future__ import annotations

import asyncio
import base64
import contextlib
import hashlib
import json
import os
import random
import signal
import stat
import tempfile
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import aioamztoken as at
from aioamztoken import DecryptionError, StorageError, Token
from aioamztoken.stores import EncryptedFileTokenStore, FileTokenStore, TokenCipher
from aioamztoken.stores._codec import encode_file
from tests.test_store_processes import (
    BASE_ACCOUNTS,
    CRASH_ROUNDS,
    UNTOUCHED,
    check_intact,
    child,
    expect,
    tell,
    token_for,
)

KEY = TokenCipher.generate_key()
OLD_KEY = TokenCipher.generate_key()
ACCESS = "Atza|SECRET-ACCESS-VALUE"
REFRESH = "Atzr|SECRET-REFRESH-VALUE"
ACCOUNT = "amzn1.account.HIDDEN-ACCOUNT-ID"
TOKEN = Token(ACCESS, REFRESH, 1_700_000_000.5, scope="advertising::campaign_management")


def token(n: int) -> Token:
    return Token(f"Atza|access-{n}", f"Atzr|refresh-{n}", 1_700_000_000.0 + n)


def files_under(path: Path) -> list[Path]:
    return sorted(p for p in path.rglob("*") if p.is_file())


def names_under(path: Path) -> list[str]:
    return [str(p.relative_to(path)) for p in path.rglob("*")]


def assert_refused(err: pytest.ExceptionInfo[StorageError], path: Path) -> None:
    message = str(err.value)
    assert err.value.location == str(path)
    assert str(path) in message
    assert "left untouched" in message
    for secret in (ACCESS, REFRESH, KEY, OLD_KEY):
        assert secret not in message


# ------------------------------------------------------------------------------ the cipher


def test_generated_keys_are_43_url_safe_characters_and_never_repeat() -> None:
    keys = {TokenCipher.generate_key() for _ in range(100)}
    assert len(keys) == 100
    for key in keys:
        assert len(key) == 43
        assert len(base64.urlsafe_b64decode(key + "=")) == 32
    assert len(EncryptedFileTokenStore.generate_key()) == 43


def test_a_blob_decrypts_back_and_never_repeats() -> None:
    cipher = TokenCipher(KEY)
    blobs = {cipher.encrypt(b"the same plaintext") for _ in range(20)}
    assert len(blobs) == 20  # a fresh nonce each time
    for blob in blobs:
        assert b"plaintext" not in blob
        assert len(blob) == len(b"the same plaintext") + 41
        assert cipher.decrypt(blob, location="here") == (b"the same plaintext", False)
    assert cipher.decrypt(cipher.encrypt(b""), location="here") == (b"", False)


@pytest.mark.parametrize(
    "bad",
    [
        "",
        "   ",
        "too-short",
        KEY[:-1],
        KEY + "A",
        KEY[:-1] + "*",
        base64.b64encode(os.urandom(32)).decode().replace("-", "+") + "+/",
        base64.urlsafe_b64encode(os.urandom(16)).decode(),  # a 128-bit key
        base64.urlsafe_b64encode(os.urandom(32)).decode() + "\x00",
    ],
)
def test_a_malformed_key_is_a_value_error_that_never_shows_the_key(bad: str) -> None:
    for keys in (bad, [KEY, bad]):
        with pytest.raises(ValueError) as err:
            TokenCipher(keys)
        assert "generate_key" in str(err.value)
        if bad.strip():
            assert bad.strip() not in str(err.value)
            assert bad[:10] not in str(err.value)
        assert KEY not in str(err.value)
    with pytest.raises(ValueError, match=r"key #2 \(of 2\)"):
        TokenCipher([KEY, bad])


def test_a_key_of_the_wrong_type_or_no_key_is_refused() -> None:
    with pytest.raises(TypeError):
        TokenCipher(KEY.encode())  # type: ignore[arg-type]
    with pytest.raises(TypeError):
        TokenCipher([KEY, 5])  # type: ignore[list-item]
    with pytest.raises(ValueError, match="at least one key"):
        TokenCipher([])


def test_padding_and_surrounding_blanks_of_a_key_are_accepted() -> None:
    blob = TokenCipher(KEY).encrypt(b"x")
    assert TokenCipher(f"  {KEY}=\n").decrypt(blob, location="here") == (b"x", False)


def test_a_string_of_comma_separated_keys_is_a_list_of_keys() -> None:
    old_blob = TokenCipher(OLD_KEY).encrypt(b"old")
    assert TokenCipher(f"{KEY}, {OLD_KEY}\n").decrypt(old_blob, location="here") == (b"old", True)
    with pytest.raises(ValueError, match=r"key #2 \(of 2\)"):
        TokenCipher(f"{KEY},")


def test_the_repr_counts_keys_and_shows_none() -> None:
    assert repr(TokenCipher(KEY)) == "TokenCipher(<1 key>)"
    assert repr(TokenCipher([KEY, OLD_KEY])) == "TokenCipher(<2 keys>)"


def test_with_new_and_old_keys_both_read_and_old_data_is_flagged() -> None:
    old_blob = TokenCipher(OLD_KEY).encrypt(b"old")
    both = TokenCipher([KEY, OLD_KEY])
    assert both.decrypt(old_blob, location="here") == (b"old", True)
    new_blob = both.encrypt(b"new")
    assert TokenCipher(KEY).decrypt(new_blob, location="here") == (b"new", False)
    with pytest.raises(DecryptionError):
        TokenCipher(OLD_KEY).decrypt(new_blob, location="here")


def test_a_wrong_key_is_a_decryption_error_naming_the_location() -> None:
    blob = TokenCipher(OLD_KEY).encrypt(b"secret")
    with pytest.raises(DecryptionError) as err:
        TokenCipher(KEY).decrypt(blob, location="/some/file")
    assert isinstance(err.value, StorageError)
    assert err.value.location == "/some/file"
    assert "another key, or altered" in str(err.value)


def test_every_changed_byte_of_a_blob_is_detected() -> None:
    cipher = TokenCipher(KEY)
    blob = cipher.encrypt(b'{"a": "token"}')
    for position in range(len(blob)):
        for flip in (0x01, 0x80):
            changed = bytearray(blob)
            changed[position] ^= flip
            with pytest.raises(DecryptionError):
                cipher.decrypt(bytes(changed), location="here")
    for cut in (blob[:-1], blob[:24], b"", blob + b"\n", blob + b"\x00"):
        with pytest.raises(DecryptionError):
            cipher.decrypt(cut, location="here")


def test_another_format_version_is_named_in_the_error() -> None:
    blob = bytearray(TokenCipher(KEY).encrypt(b"x"))
    blob[4] = 2
    with pytest.raises(DecryptionError, match="encryption format 2"):
        TokenCipher(KEY).decrypt(bytes(blob), location="here")


@settings(max_examples=300)
@given(st.binary(max_size=120))
def test_arbitrary_bytes_never_decrypt(blob: bytes) -> None:
    with pytest.raises(DecryptionError):
        TokenCipher(KEY).decrypt(blob, location="here")


def test_keyed_hashes_are_stable_per_key_and_unlike_plain_hashes() -> None:
    name = TokenCipher(KEY).keyed_hash(b"acct")
    assert name == TokenCipher([KEY, OLD_KEY]).keyed_hash(b"acct")
    assert name != TokenCipher(OLD_KEY).keyed_hash(b"acct")
    assert name != TokenCipher(KEY).keyed_hash(b"acct2")
    assert name != hashlib.sha256(b"acct").hexdigest()
    assert len(name) == 64


# ------------------------------------------------------------------------------ the store


def test_the_store_is_exported_and_a_file_store_with_a_key(tmp_path: Path) -> None:
    assert at.EncryptedFileTokenStore is EncryptedFileTokenStore
    assert at.DecryptionError is DecryptionError
    assert issubclass(DecryptionError, StorageError)
    store = EncryptedFileTokenStore(tmp_path / "t.enc", key=KEY)
    assert isinstance(store, at.stores.LockingTokenStore)
    assert repr(store) == f"EncryptedFileTokenStore({str(tmp_path / 't.enc')!r})"
    assert KEY not in repr(store)
    with pytest.raises(TypeError):
        EncryptedFileTokenStore(tmp_path / "t.enc")  # type: ignore[call-arg]
    with pytest.raises(ValueError, match="not an aioamztoken key"):
        EncryptedFileTokenStore(tmp_path / "t.enc", key="hunter2")


async def test_tokens_round_trip(tmp_path: Path) -> None:
    store = EncryptedFileTokenStore(tmp_path / "state" / "tokens.enc", key=KEY)
    assert await store.accounts() == []
    assert await store.load(ACCOUNT) is None
    await store.save(ACCOUNT, TOKEN)
    await store.save("other", token(2))
    assert await store.load(ACCOUNT) == TOKEN
    assert await store.accounts() == sorted([ACCOUNT, "other"])
    await store.delete("other")
    await store.delete("absent")
    again = EncryptedFileTokenStore(tmp_path / "state" / "tokens.enc", key=KEY)
    assert await again.accounts() == [ACCOUNT]
    assert await again.load(ACCOUNT) == TOKEN


async def test_no_token_secret_account_id_or_key_is_readable_on_disk(tmp_path: Path) -> None:
    store = EncryptedFileTokenStore(tmp_path / "tokens.enc", key=[KEY, OLD_KEY])
    await store.save(ACCOUNT, TOKEN)
    async with store.lock(ACCOUNT):  # a lock file now exists as well
        await store.save("second-account", token(1))
    files = files_under(tmp_path)
    assert len(files) >= 3  # the data, the write lock and an account lock
    needles = [ACCESS, REFRESH, ACCOUNT, "second-account", "advertising", "refresh-1", "HIDDEN"]
    keys = [KEY, OLD_KEY, *(base64.urlsafe_b64decode(k + "=") for k in (KEY, OLD_KEY))]
    for path in files:
        data = path.read_bytes()
        for needle in needles:
            assert needle.encode() not in data, path
        for key in keys:
            assert (key.encode() if isinstance(key, str) else key) not in data, path
    plain_hash = hashlib.sha256(ACCOUNT.encode()).hexdigest()
    for name in names_under(tmp_path):
        assert "HIDDEN" not in name
        assert plain_hash not in name


async def test_the_file_is_private_and_holds_only_the_encrypted_blob(tmp_path: Path) -> None:
    path = tmp_path / "tokens.enc"
    store = EncryptedFileTokenStore(path, key=KEY)
    await store.save(ACCOUNT, TOKEN)
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    plaintext, old = TokenCipher(KEY).decrypt(path.read_bytes(), location=str(path))
    assert not old
    assert json.loads(plaintext)["accounts"][ACCOUNT]["access_token"] == ACCESS
    assert [p.name for p in tmp_path.iterdir() if p.is_file()] == ["tokens.enc"]


async def test_a_wrong_key_raises_decryption_error_and_never_touches_the_file(
    tmp_path: Path,
) -> None:
    path = tmp_path / "tokens.enc"
    await EncryptedFileTokenStore(path, key=OLD_KEY).save(ACCOUNT, TOKEN)
    data = path.read_bytes()
    store = EncryptedFileTokenStore(path, key=KEY)
    for attempt in (
        store.load(ACCOUNT),
        store.accounts(),
        store.save(ACCOUNT, token(1)),
        store.save("someone-else", token(1)),
        store.delete(ACCOUNT),
    ):
        with pytest.raises(DecryptionError) as err:
            await attempt
        assert_refused(err, path)
    assert path.read_bytes() == data
    assert await EncryptedFileTokenStore(path, key=OLD_KEY).load(ACCOUNT) == TOKEN


async def test_a_plain_json_token_file_is_not_taken_for_an_encrypted_one(tmp_path: Path) -> None:
    path = tmp_path / "tokens.json"
    await FileTokenStore(path).save(ACCOUNT, TOKEN)
    data = path.read_bytes()
    with pytest.raises(DecryptionError, match="not data encrypted by aioamztoken") as err:
        await EncryptedFileTokenStore(path, key=KEY).save(ACCOUNT, token(1))
    assert_refused(err, path)
    assert path.read_bytes() == data


async def test_an_encrypted_document_that_is_not_a_token_document_is_a_storage_error(
    tmp_path: Path,
) -> None:
    path = tmp_path / "tokens.enc"
    path.write_bytes(TokenCipher(KEY).encrypt(b'{"format": "aioamztoken/1", "accounts": []}'))
    data = path.read_bytes()
    store = EncryptedFileTokenStore(path, key=KEY)
    for attempt in (store.load("a"), store.save("a", token(1)), store.accounts()):
        with pytest.raises(StorageError, match="not a JSON object") as err:
            await attempt
        assert not isinstance(err.value, DecryptionError)
    assert path.read_bytes() == data


async def test_with_new_and_old_keys_old_data_reads_and_the_next_save_rewrites_it_under_new(
    tmp_path: Path,
) -> None:
    path = tmp_path / "tokens.enc"
    await EncryptedFileTokenStore(path, key=OLD_KEY).save(ACCOUNT, TOKEN)
    under_old = path.read_bytes()
    rotating = EncryptedFileTokenStore(path, key=[KEY, OLD_KEY])
    assert await rotating.load(ACCOUNT) == TOKEN
    assert path.read_bytes() == under_old  # reading writes nothing
    await rotating.save(ACCOUNT, TOKEN)  # the same token: rewritten all the same
    assert path.read_bytes() != under_old
    assert TokenCipher(KEY).decrypt(path.read_bytes(), location="here")[1] is False
    assert await EncryptedFileTokenStore(path, key=KEY).load(ACCOUNT) == TOKEN
    with pytest.raises(DecryptionError):
        await EncryptedFileTokenStore(path, key=OLD_KEY).load(ACCOUNT)


async def test_locks_exclude_across_instances_and_by_account(tmp_path: Path) -> None:
    one = EncryptedFileTokenStore(tmp_path / "t.enc", key=KEY)
    two = EncryptedFileTokenStore(tmp_path / "t.enc", key=KEY)
    async with one.lock("a"):
        with pytest.raises(asyncio.TimeoutError):
            await asyncio.wait_for(_enter(two, "a"), 0.2)
        await asyncio.wait_for(_enter(two, "b"), 2)
    await asyncio.wait_for(_enter(two, "a"), 2)


async def _enter(store: EncryptedFileTokenStore, account_id: str) -> None:
    async with store.lock(account_id):
        pass


async def test_500_concurrent_saves_land_in_a_few_writes(tmp_path: Path) -> None:
    store = EncryptedFileTokenStore(tmp_path / "t.enc", key=KEY)
    await asyncio.gather(*(store.save(f"acct-{i}", token(i)) for i in range(500)))
    again = EncryptedFileTokenStore(tmp_path / "t.enc", key=KEY)
    assert len(await again.accounts()) == 500
    assert await again.load("acct-499") == token(499)


# ------------------------------------------------------------------------------ bad input


def _valid_blob() -> bytes:
    return TokenCipher(KEY).encrypt(encode_file({"acct": TOKEN, "other": token(2)}))


@st.composite
def _file_bytes(draw: st.DrawFn) -> bytes:
    kind = draw(st.sampled_from(["random", "changed", "encrypted garbage", "encrypted json"]))
    if kind == "random":
        return draw(st.binary(max_size=200))
    if kind == "changed":  # a valid file with bytes changed, cut or added
        blob = bytearray(_valid_blob())
        for _ in range(draw(st.integers(1, 3))):
            blob[draw(st.integers(0, len(blob) - 1))] ^= draw(st.integers(1, 255))
        return bytes(blob[: draw(st.integers(0, len(blob)))]) + draw(st.binary(max_size=3))
    if kind == "encrypted garbage":  # the right key, a plaintext that is no document
        return TokenCipher(KEY).encrypt(draw(st.binary(max_size=100)))
    document = {"format": "aioamztoken/1", "accounts": {"acct": TOKEN.to_dict()}}
    field = draw(st.sampled_from(["access_token", "refresh_token", "expires_at", "scope"]))
    document["accounts"]["acct"][field] = draw(  # type: ignore[index]
        st.none() | st.integers() | st.floats() | st.text(max_size=5) | st.lists(st.none())
    )
    return TokenCipher(KEY).encrypt(json.dumps(document).encode())


@settings(
    max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(raw=_file_bytes())
def test_any_bytes_in_the_file_load_or_raise_storage_error_and_are_never_overwritten(
    raw: bytes,
) -> None:
    async def scenario(base: Path) -> None:
        path = base / "t.enc"
        path.write_bytes(raw)
        store = EncryptedFileTokenStore(path, key=KEY)
        refused: StorageError | None = None
        try:
            loaded = await store.load("acct")
        except StorageError as exc:
            refused = exc
        if refused is not None:
            assert ACCESS not in str(refused)
            assert REFRESH not in str(refused)
            for attempt in (store.save("acct", token(1)), store.delete("acct")):
                with pytest.raises(StorageError):
                    await attempt
            assert path.read_bytes() == raw
        else:
            assert loaded is None or isinstance(loaded, Token)
            await store.save("acct", token(1))
            assert await store.load("acct") == token(1)

    with tempfile.TemporaryDirectory() as base:
        asyncio.run(scenario(Path(base)))


# ------------------------------------------------------------------------------ processes


@pytest.fixture
def key_in_env(monkeypatch: pytest.MonkeyPatch) -> str:
    """Children inherit the key through the environment, never through their arguments."""
    monkeypatch.setenv("AIOAMZTOKEN_KEY", KEY)
    return KEY


@pytest.mark.usefixtures("key_in_env")
async def test_4_processes_saving_40_accounts_each_lose_none(tmp_path: Path) -> None:
    path = tmp_path / "tokens.enc"
    async with contextlib.AsyncExitStack() as stack:
        procs = [
            await stack.enter_async_context(
                child("save-many", "encrypted", str(path), f"p{n}", "40")
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
    store = EncryptedFileTokenStore(path, key=KEY)
    expected = sorted(f"p{n}-{i}" for n in range(4) for i in range(40))
    assert await store.accounts() == expected
    for account_id in expected:
        assert await store.load(account_id) == token_for(account_id, 1)


@pytest.mark.usefixtures("key_in_env")
async def test_a_lock_held_by_a_killed_process_is_free_at_once(tmp_path: Path) -> None:
    store = EncryptedFileTokenStore(tmp_path / "tokens.enc", key=KEY)
    async with child("hold-lock", "encrypted", store.path, "a") as proc:
        await expect(proc, "locked")
        with pytest.raises(asyncio.TimeoutError):
            await asyncio.wait_for(_enter(store, "a"), 0.2)
        proc.send_signal(signal.SIGKILL)
        assert await proc.wait() == -signal.SIGKILL
    await asyncio.wait_for(_enter(store, "a"), 1)


@pytest.mark.usefixtures("key_in_env")
async def test_a_writer_killed_at_random_moments_never_tears_or_loses_a_record(
    tmp_path: Path,
) -> None:
    store = EncryptedFileTokenStore(tmp_path / "tokens.enc", key=KEY)
    for account_id in UNTOUCHED + BASE_ACCOUNTS:
        await store.save(account_id, token_for(account_id, 0))
    floor: dict[str, int] = {}
    rng = random.Random(4321)
    survived = 0
    for round_number in range(CRASH_ROUNDS):
        start = (round_number + 1) * 1_000_000
        async with child("churn-one", "encrypted", store.path, str(start)) as proc:
            await expect(proc, "ready")
            await asyncio.sleep(rng.uniform(0.0, 0.15))
            proc.send_signal(signal.SIGKILL)
            assert await proc.wait() == -signal.SIGKILL
        generations = await check_intact(store, floor)  # type: ignore[arg-type]
        assert all(generations[a] > start for a in BASE_ACCOUNTS)
        floor = {a: generations[a] for a in BASE_ACCOUNTS}
        survived += 1
    assert survived == CRASH_ROUNDS
    leftovers = [n for n in os.listdir(tmp_path) if n.endswith(".tmp")]
    assert all(n.startswith(".") for n in leftovers)
    print(
        f"\n{survived} kill rounds survived; the encrypted store holds "
        f"{len(await store.accounts())} accounts; {len(leftovers)} temporary files left by kills"
    )
