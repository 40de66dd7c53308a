"""Store URLs (open_store) and copying accounts between stores (migrate)."""

from __future__ import annotations

import asyncio
import os
from pathlib import Path

import keyring
import keyring.core
import pytest
from keyring.backend import KeyringBackend

import aioamztoken as at
from aioamztoken import DecryptionError, StorageError, Token
from aioamztoken.stores import (
    DirectoryTokenStore,
    EncryptedFileTokenStore,
    FileTokenStore,
    KeyringTokenStore,
    MemoryTokenStore,
    MigrationReport,
    TokenCipher,
    migrate,
    open_store,
)
from aioamztoken.stores._url import SCHEMES, display_url

KEY = TokenCipher.generate_key()
OLD_KEY = TokenCipher.generate_key()
PASSWORD = "s3cret-PASSWORD"
ACCESS = "Atza|SECRET-ACCESS-VALUE"
REFRESH = "Atzr|SECRET-REFRESH-VALUE"


def token(n: int) -> Token:
    return Token(f"{ACCESS}-{n}", f"{REFRESH}-{n}", 1_700_000_000.0 + n)


@pytest.fixture
def backend(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> KeyringBackend:
    """A real file keyring in tmp_path as the process's keyring; lock files go there too."""
    plaintext = pytest.importorskip(
        "keyrings.alt.file", reason="needs the insecure-test-keyring extra (keyrings.alt)"
    )
    monkeypatch.setenv("XDG_DATA_HOME", str(tmp_path / "data"))
    monkeypatch.setattr(keyring.core, "_keyring_backend", keyring.core._keyring_backend)
    chosen = plaintext.PlaintextKeyring()
    keyring.set_keyring(chosen)
    return chosen


# ------------------------------------------------------------------------------ open_store


def test_open_store_is_exported() -> None:
    assert at.open_store is open_store


@pytest.mark.parametrize("url", ["memory://", "memory:", "MEMORY://"])
def test_memory(url: str) -> None:
    assert isinstance(open_store(url), MemoryTokenStore)


@pytest.mark.parametrize(
    ("url", "kind"),
    [
        ("file:///var/lib/app/tokens.json", FileTokenStore),
        ("file://localhost/var/lib/app/tokens.json", FileTokenStore),
        ("file:/var/lib/app/tokens.json", FileTokenStore),
        ("dir:///var/lib/app/tokens.json", DirectoryTokenStore),
        ("dir://localhost/var/lib/app/tokens.json", DirectoryTokenStore),
    ],
)
def test_file_and_directory_urls_name_absolute_paths(url: str, kind: type) -> None:
    store = open_store(url)
    assert type(store) is kind
    assert store.path == "/var/lib/app/tokens.json"  # type: ignore[attr-defined]


def test_a_tilde_path_is_in_the_home_directory_and_a_relative_one_in_the_cwd(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    monkeypatch.chdir(tmp_path)
    assert open_store("file:~/t.json").path == str(tmp_path / "home" / "t.json")  # type: ignore[attr-defined]
    assert open_store("dir:state/tokens").path == str(tmp_path / "state" / "tokens")  # type: ignore[attr-defined]


@pytest.mark.parametrize("name", ["a b.json", "100%.json", "what?.json", "#1.json", "ünï.json"])
def test_paths_are_percent_decoded_so_path_as_uri_round_trips(name: str, tmp_path: Path) -> None:
    path = tmp_path / name
    assert open_store(path.as_uri()).path == str(path)  # type: ignore[attr-defined]
    assert open_store("dir" + path.as_uri()[len("file") :]).path == str(path)  # type: ignore[attr-defined]


async def test_a_file_url_store_works(tmp_path: Path) -> None:
    store = open_store(f"file://{tmp_path}/t.json")
    await store.save("acct", token(1))
    assert await FileTokenStore(tmp_path / "t.json").load("acct") == token(1)


@pytest.mark.parametrize(
    ("url", "problem"),
    [
        ("file://tokens.json", "three slashes"),
        ("file://example.com/tokens.json", "names the host"),
        ("file:", "names no file"),
        ("file:///", "names no file"),
        ("dir://", "names no file"),
        ("file:///t.json?mode=600", "unknown query parameters ['mode']"),
        ("file:///t.json#frag", "fragment"),
        ("file:///t.json?key_env=X", "unknown query parameters ['key_env']"),
        ("memory://somewhere", "just memory://"),
        ("keyring://svc/path", "has a path"),
        ("encrypted-file:///t.enc?key_env=A&key_env=B", "repeats a query parameter"),
        ("encrypted-file:///t.enc?key_env=A&key_keyring=B", "not both"),
        ("encrypted-file:///t.enc?key_keyring=", "empty key_keyring"),
        ("file:///%ff.json", "percent-encoded UTF-8"),
    ],
)
def test_malformed_urls_are_value_errors_saying_what_is_wrong(url: str, problem: str) -> None:
    with pytest.raises(ValueError, match="store URL") as err:
        open_store(url)
    assert problem in str(err.value)


@pytest.mark.parametrize("url", ["ftp://host/x", "tokens.json", "/abs/tokens.json", "", "s3://b/k"])
def test_an_unknown_scheme_is_a_value_error_listing_the_schemes(url: str) -> None:
    with pytest.raises(ValueError, match="not a store URL") as err:
        open_store(url)
    for scheme in SCHEMES:
        assert f"{scheme}:" in str(err.value)
    assert set(SCHEMES) == {
        "memory",
        "file",
        "dir",
        "encrypted-file",
        "keyring",
        "redis",
        "rediss",
        "redis+cluster",
        "rediss+cluster",
        "redis+sentinel",
        "rediss+sentinel",
        "sqlite",
        "postgresql",
        "postgres",
    }


def test_a_url_that_is_not_a_string_is_a_type_error() -> None:
    with pytest.raises(TypeError):
        open_store(Path("/x"))  # type: ignore[arg-type]


@pytest.mark.parametrize(
    "url",
    [
        f"ftp://user:{PASSWORD}@host/x",
        f"file://user:{PASSWORD}@host/x",
        f"encrypted-file:///t.enc?key={PASSWORD}",
        f"file:///t.json?password={PASSWORD}",
        f"redis://:{PASSWORD}@localhost/0?key={PASSWORD}",
    ],
)
def test_no_error_shows_a_password_or_key_from_the_url(url: str) -> None:
    with pytest.raises(ValueError) as err:
        open_store(url)
    assert PASSWORD not in str(err.value)


def test_display_url_hides_passwords_and_secret_parameters() -> None:
    assert display_url(f"redis://:{PASSWORD}@h:6379/0") == "redis://:***@h:6379/0"
    assert display_url(f"redis://me:{PASSWORD}@h/0?namespace=x") == "redis://me:***@h/0?namespace=x"
    assert display_url(f"x://h/?password={PASSWORD}&a=1") == "x://h/?password=***&a=1"
    assert display_url("file:///a/b.json") == "file:///a/b.json"


def test_a_key_in_the_url_itself_is_refused_with_the_safe_ways_to_pass_one() -> None:
    with pytest.raises(ValueError, match=r"key_env=NAME.*key_keyring=SERVICE") as err:
        open_store(f"encrypted-file:///t.enc?key={KEY}")
    assert KEY not in str(err.value)


# ------------------------------------------------------------------------------ keys


async def test_an_encrypted_file_url_takes_its_key_from_aioamztoken_key(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("AIOAMZTOKEN_KEY", KEY)
    store = open_store(f"encrypted-file://{tmp_path}/t.enc")
    assert isinstance(store, EncryptedFileTokenStore)
    await store.save("acct", token(1))
    assert await EncryptedFileTokenStore(tmp_path / "t.enc", key=KEY).load("acct") == token(1)


async def test_key_env_names_another_variable_and_commas_separate_rotated_keys(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    await EncryptedFileTokenStore(tmp_path / "t.enc", key=OLD_KEY).save("acct", token(1))
    monkeypatch.delenv("AIOAMZTOKEN_KEY", raising=False)
    monkeypatch.setenv("MY_APP_KEYS", f"{KEY}, {OLD_KEY}\n")
    store = open_store(f"encrypted-file://{tmp_path}/t.enc?key_env=MY_APP_KEYS")
    assert await store.load("acct") == token(1)
    await store.save("acct", token(2))  # now under the new key
    assert await EncryptedFileTokenStore(tmp_path / "t.enc", key=KEY).load("acct") == token(2)


@pytest.mark.parametrize("value", [None, "", " , "])
def test_a_missing_key_is_a_value_error_naming_the_variable(
    value: str | None, monkeypatch: pytest.MonkeyPatch
) -> None:
    if value is None:
        monkeypatch.delenv("AIOAMZTOKEN_KEY", raising=False)
    else:
        monkeypatch.setenv("AIOAMZTOKEN_KEY", value)
    with pytest.raises(ValueError, match="environment variable AIOAMZTOKEN_KEY") as err:
        open_store("encrypted-file:///t.enc")
    assert "generate_key" in str(err.value)


def test_a_malformed_key_in_the_environment_is_a_value_error_that_hides_it(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("AIOAMZTOKEN_KEY", f"{KEY},not-a-real-key-{PASSWORD}")
    with pytest.raises(ValueError, match=r"key #2 \(of 2\)") as err:
        open_store("encrypted-file:///t.enc")
    assert PASSWORD not in str(err.value)
    assert KEY not in str(err.value)


async def test_key_keyring_reads_the_key_from_the_os_keyring(
    tmp_path: Path, backend: KeyringBackend
) -> None:
    backend.set_password("my-app", "encryption-key", KEY)
    store = open_store(f"encrypted-file://{tmp_path}/t.enc?key_keyring=my-app")
    await store.save("acct", token(1))
    assert await EncryptedFileTokenStore(tmp_path / "t.enc", key=KEY).load("acct") == token(1)
    with pytest.raises(ValueError, match="'encryption-key' entry of keyring service 'other'"):
        open_store(f"encrypted-file://{tmp_path}/t.enc?key_keyring=other")


def test_a_keyring_that_fails_while_reading_the_key_is_a_storage_error(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    import keyring.backends.fail

    monkeypatch.setattr(keyring.core, "_keyring_backend", keyring.backends.fail.Keyring())
    with pytest.raises(StorageError, match="NoKeyringError"):
        open_store("encrypted-file:///t.enc?key_keyring=my-app")


# ------------------------------------------------------------------------------ keyring, redis


@pytest.mark.parametrize(
    ("url", "service"),
    [
        ("keyring://", "aioamztoken"),
        ("keyring:", "aioamztoken"),
        ("keyring://my-app", "my-app"),
        ("keyring://My%20App", "My App"),
        ("keyring://MixedCase/", "MixedCase"),
    ],
)
def test_keyring_urls_name_the_service(url: str, service: str) -> None:
    store = open_store(url)
    assert isinstance(store, KeyringTokenStore)
    assert store.service == service


async def test_a_keyring_url_store_works(backend: KeyringBackend) -> None:
    store = open_store("keyring://my-app?allow_insecure_backend=1")  # a plaintext file here
    await store.save("acct", token(1))
    assert await KeyringTokenStore("my-app", allow_insecure_backend=True).load("acct") == token(1)


@pytest.fixture
def redis_store_class() -> type:
    pytest.importorskip("redis")
    module = pytest.importorskip("aioamztoken.stores._redis")
    return module.RedisTokenStore  # type: ignore[no-any-return]


async def test_a_redis_url_builds_a_redis_store_with_its_namespace_and_no_password_shown(
    redis_store_class: type,
) -> None:
    store = open_store(f"redis://:{PASSWORD}@127.0.0.1:6390/2?namespace=team-a")
    try:
        assert isinstance(store, redis_store_class)
        assert store.namespace == "team-a"  # type: ignore[attr-defined]
        assert PASSWORD not in repr(store)
    finally:
        await store.aclose()  # type: ignore[attr-defined]
    default = open_store("rediss://127.0.0.1:6390")
    try:
        assert isinstance(default, redis_store_class)
        assert default.namespace == "aioamztoken"  # type: ignore[attr-defined]
    finally:
        await default.aclose()  # type: ignore[attr-defined]


async def test_a_redis_url_is_encrypted_only_when_given_a_key_source(
    redis_store_class: type, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("AIOAMZTOKEN_KEY", KEY)
    plain = open_store("redis://127.0.0.1:6390/0")
    encrypted = open_store("redis://127.0.0.1:6390/0?key_env=AIOAMZTOKEN_KEY")
    try:
        assert "encrypted" not in repr(plain)
        assert "encrypted" in repr(encrypted)
        assert KEY not in repr(encrypted)
    finally:
        await plain.aclose()  # type: ignore[attr-defined]
        await encrypted.aclose()  # type: ignore[attr-defined]


# ------------------------------------------------------------------------------ migrate


async def fill(store: at.TokenStore, count: int) -> dict[str, Token]:
    tokens = {f"acct-{n:02}": token(n) for n in range(count)}
    for account_id, value in tokens.items():
        await store.save(account_id, value)
    return tokens


def assert_no_secret(report: MigrationReport) -> None:
    text = report.render()
    for secret in (ACCESS, REFRESH, KEY, "Atza|", "Atzr|"):
        assert secret not in text
        assert secret not in repr(report)


async def test_migrate_copies_every_account_and_verifies_it(tmp_path: Path) -> None:
    source = FileTokenStore(tmp_path / "t.json")
    target = EncryptedFileTokenStore(tmp_path / "t.enc", key=KEY)
    tokens = await fill(source, 25)
    report = await migrate(source, target)
    assert report.ok
    assert report.copied == tuple(sorted(tokens))
    assert report.skipped == {}
    assert report.failed == {}
    assert report.total == 25
    for account_id, value in tokens.items():
        assert await target.load(account_id) == value
    assert await source.accounts() == sorted(tokens)  # nothing leaves the source
    text = report.render()
    assert "copied   25" in text
    assert "result   ok" in text
    assert str(tmp_path / "t.json") in text
    assert str(report) == text
    assert_no_secret(report)


async def test_migrating_again_skips_what_is_already_there(tmp_path: Path) -> None:
    source = DirectoryTokenStore(tmp_path / "d")
    target = FileTokenStore(tmp_path / "t.json")
    await fill(source, 5)
    await migrate(source, target)
    again = await migrate(source, target)
    assert again.ok
    assert again.copied == ()
    assert set(again.skipped.values()) == {"already in the target with the same token"}


async def test_an_account_with_another_token_in_the_target_is_replaced_only_on_request(
    tmp_path: Path,
) -> None:
    source, target = MemoryTokenStore(), FileTokenStore(tmp_path / "t.json")
    await source.save("acct", token(1))
    await target.save("acct", token(2))
    kept = await migrate(source, target)
    assert kept.ok
    assert "overwrite=True" in kept.skipped["acct"]
    assert await target.load("acct") == token(2)
    replaced = await migrate(source, target, overwrite=True)
    assert replaced.copied == ("acct",)
    assert await target.load("acct") == token(1)


async def test_an_unreadable_source_account_fails_alone_with_its_reason(tmp_path: Path) -> None:
    source = DirectoryTokenStore(tmp_path / "d")
    target = MemoryTokenStore()
    await fill(source, 3)
    (tmp_path / "d" / "broken.json").write_bytes(b"{ not json")
    report = await migrate(source, target)
    assert not report.ok
    assert report.copied == ("acct-00", "acct-01", "acct-02")
    assert list(report.failed) == ["broken"]
    assert "reading it from the source" in report.failed["broken"]
    assert str(tmp_path / "d" / "broken.json") in report.failed["broken"]
    assert "result   FAILED" in report.render()
    assert (tmp_path / "d" / "broken.json").read_bytes() == b"{ not json"
    assert_no_secret(report)


async def test_an_unreadable_target_fails_every_account_and_is_left_untouched(
    tmp_path: Path,
) -> None:
    source = MemoryTokenStore()
    await fill(source, 3)
    await EncryptedFileTokenStore(tmp_path / "t.enc", key=OLD_KEY).save("x", token(9))
    before = (tmp_path / "t.enc").read_bytes()
    report = await migrate(source, EncryptedFileTokenStore(tmp_path / "t.enc", key=KEY))
    assert sorted(report.failed) == ["acct-00", "acct-01", "acct-02"]
    assert all("reading it from the target" in why for why in report.failed.values())
    assert all("cannot be decrypted" in why for why in report.failed.values())
    assert (tmp_path / "t.enc").read_bytes() == before
    assert_no_secret(report)


class ForgetfulStore(MemoryTokenStore):
    """A (user-written) store whose saves are lost."""

    async def save(self, account_id: str, token: Token) -> None:
        pass


class LeakyStore(MemoryTokenStore):
    """A (user-written) store whose errors quote the data."""

    async def load(self, account_id: str) -> Token | None:
        raise RuntimeError(f"cannot parse {ACCESS}")


async def test_a_target_that_loses_writes_is_caught_by_the_verification() -> None:
    source = MemoryTokenStore()
    await source.save("acct", token(1))
    report = await migrate(source, ForgetfulStore())
    assert report.failed == {
        "acct": "the target gave back another token than the one written to it"
    }


async def test_reasons_from_other_stores_errors_give_only_their_type() -> None:
    source = MemoryTokenStore()
    await source.save("acct", token(1))
    report = await migrate(source, LeakyStore())
    assert report.failed == {"acct": "reading it from the target: RuntimeError"}
    assert_no_secret(report)


async def test_a_source_that_cannot_list_its_accounts_raises(tmp_path: Path) -> None:
    (tmp_path / "t.json").write_bytes(b"garbage")
    with pytest.raises(StorageError, match="left untouched"):
        await migrate(FileTokenStore(tmp_path / "t.json"), MemoryTokenStore())
    with pytest.raises(DecryptionError):
        await migrate(EncryptedFileTokenStore(tmp_path / "t.json", key=KEY), MemoryTokenStore())


async def test_a_store_cannot_be_migrated_into_itself() -> None:
    store = MemoryTokenStore()
    with pytest.raises(ValueError, match="same store"):
        await migrate(store, store)
    with pytest.raises(ValueError, match="concurrency"):
        await migrate(store, MemoryTokenStore(), concurrency=0)


async def test_migrate_between_urls_from_a_file_to_the_keyring_and_back_encrypted(
    tmp_path: Path, backend: KeyringBackend, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("AIOAMZTOKEN_KEY", KEY)
    tokens = await fill(open_store(f"file://{tmp_path}/t.json"), 4)
    to_keyring = await migrate(
        open_store(f"file://{tmp_path}/t.json"),
        open_store("keyring://migrated?allow_insecure_backend=1"),
    )
    assert to_keyring.copied == tuple(sorted(tokens))
    to_encrypted = await migrate(
        open_store("keyring://migrated?allow_insecure_backend=1"),
        open_store(f"encrypted-file://{tmp_path}/t.enc"),
    )
    assert to_encrypted.copied == tuple(sorted(tokens))
    encrypted = EncryptedFileTokenStore(tmp_path / "t.enc", key=KEY)
    assert {a: await encrypted.load(a) for a in await encrypted.accounts()} == tokens
    assert ACCESS.encode() not in (tmp_path / "t.enc").read_bytes()
    assert os.stat(tmp_path / "t.enc").st_mode & 0o777 == 0o600


async def test_accounts_are_copied_under_the_source_lock(tmp_path: Path) -> None:
    source = FileTokenStore(tmp_path / "t.json")
    await source.save("acct", token(1))
    target = MemoryTokenStore()
    async with source.lock("acct"):
        copying = asyncio.create_task(migrate(source, target))
        await asyncio.sleep(0.2)
        assert not copying.done()  # waiting for a refresh elsewhere to finish
        await source.save("acct", token(2))
    report = await copying
    assert report.copied == ("acct",)
    assert await target.load("acct") == token(2)  # the newest token
