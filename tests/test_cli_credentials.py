"""The CLI's side of credential lifecycles: re-authorization dates in ``accounts``, the
maximum age from a flag or the environment, Basic client auth and rotated secrets."""

from __future__ import annotations

import asyncio
import inspect
import json
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

import aioamztoken as at
from aioamztoken.cli import main
from aioamztoken.testing import AmazonEmulator

DAY = 86400.0


@pytest.fixture
def amazon() -> Iterator[AmazonEmulator]:
    with AmazonEmulator.running_in_thread() as emulator:
        yield emulator


@pytest.fixture
def store_path(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, amazon: AmazonEmulator) -> Path:
    for name in (
        "AIOAMZTOKEN_AUTHORIZATION_MAX_AGE",
        "AIOAMZTOKEN_CLIENT_AUTH",
        "AIOAMZTOKEN_KEY",
        "AIOAMZTOKEN_REGION",
        "AIOAMZTOKEN_CONSENT_URL",
    ):
        monkeypatch.delenv(name, raising=False)
    path = tmp_path / "tokens.json"
    monkeypatch.setenv("AIOAMZTOKEN_STORE", path.as_uri())
    monkeypatch.setenv("AIOAMZTOKEN_CLIENT_ID", amazon.client_id)
    monkeypatch.setenv("AIOAMZTOKEN_CLIENT_SECRET", amazon.client_secret)
    monkeypatch.setenv("AIOAMZTOKEN_TOKEN_URL", amazon.token_url)
    return path


def seed(path: Path, amazon: AmazonEmulator, accounts: dict[str, float | None]) -> None:
    async def save() -> None:
        store = at.FileTokenStore(path)
        for account_id, authorized_at in accounts.items():
            refresh_token = amazon.issue_refresh_token(account_id)
            await store.save(
                account_id, at.Token("", refresh_token, 0.0, authorized_at=authorized_at)
            )

    asyncio.run(save())


def run(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    status = main(list(argv))
    out, err = capsys.readouterr()
    return status, out, err


def test_accounts_show_re_authorize_by_for_accounts_near_their_date(
    store_path: Path, amazon: AmazonEmulator, capsys: pytest.CaptureFixture[str]
) -> None:
    now = time.time()
    near = now - 350 * DAY  # due in 15 days
    far = now - 10 * DAY
    seed(store_path, amazon, {"near": near, "far": far, "unknown": None, "over": now - 400 * DAY})
    status, out, _ = run(capsys, "--authorization-max-age", "365", "accounts")
    assert status == 0
    lines = out.splitlines()
    assert lines[0].split() == ["ACCOUNT", "STATE", "EXPIRES", "IN", "NOTE"]
    rows = {line.split()[0]: line for line in lines[1:]}
    due_date = time.strftime("%Y-%m-%d", time.gmtime(near + 365 * DAY))
    assert rows["near"].endswith(f"re-authorize by {due_date}")
    assert "re-authorize by" in rows["over"]
    assert rows["over"].endswith("(overdue)")
    assert "re-authorize" not in rows["far"]
    assert "re-authorize" not in rows["unknown"]

    status, out, _ = run(capsys, "accounts", "--json", "--authorization-max-age", "365")
    assert status == 0
    by_id = {row["account_id"]: row for row in json.loads(out)}
    assert by_id["near"]["authorized_at"] == near
    assert by_id["near"]["reauth_due_at"] == near + 365 * DAY
    assert by_id["far"]["reauth_due_at"] == far + 365 * DAY
    assert by_id["unknown"]["authorized_at"] is None
    assert by_id["unknown"]["reauth_due_at"] is None


def test_the_maximum_age_comes_from_the_environment(
    store_path: Path,
    amazon: AmazonEmulator,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    granted = time.time() - 80 * DAY
    seed(store_path, amazon, {"acme": granted})
    status, out, _ = run(capsys, "accounts", "--json")
    assert status == 0
    assert json.loads(out)[0]["reauth_due_at"] is None  # no maximum age known
    assert json.loads(out)[0]["authorized_at"] == granted
    monkeypatch.setenv("AIOAMZTOKEN_AUTHORIZATION_MAX_AGE", "90")
    status, out, _ = run(capsys, "accounts", "--json")
    assert json.loads(out)[0]["reauth_due_at"] == granted + 90 * DAY
    status, out, _ = run(capsys, "accounts")
    assert "re-authorize by" in out
    # The flag wins over the environment.
    status, out, _ = run(capsys, "accounts", "--json", "--authorization-max-age", "1000")
    assert json.loads(out)[0]["reauth_due_at"] == granted + 1000 * DAY


@pytest.mark.parametrize("value", ["0", "-3", "soon", "nan"])
def test_a_bad_maximum_age_is_a_usage_error(
    store_path: Path, capsys: pytest.CaptureFixture[str], value: str
) -> None:
    with pytest.raises(SystemExit) as caught:
        main(["accounts", f"--authorization-max-age={value}"])
    assert caught.value.code == 2
    assert "positive number of days" in capsys.readouterr().err


def test_refresh_with_basic_client_auth_and_a_rotated_secret(
    store_path: Path,
    amazon: AmazonEmulator,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    amazon.client_auth_methods = frozenset({"basic"})
    seed(store_path, amazon, {"acme": time.time()})
    monkeypatch.setenv("AIOAMZTOKEN_CLIENT_SECRET", f"rotated-away, {amazon.client_secret}")
    status, _, err = run(capsys, "refresh", "acme")
    assert status == 5, err  # post is refused by a Basic-only server
    status, out, err = run(capsys, "--client-auth", "basic", "refresh", "acme")
    assert status == 0, err
    assert "refreshed 'acme'" in out
    assert [r.status for r in amazon.token_log][-2:] == [401, 200]
    assert amazon.token_log[-1].headers["Authorization"].startswith("Basic ")
    monkeypatch.setenv("AIOAMZTOKEN_CLIENT_AUTH", "basic")
    status, _, err = run(capsys, "refresh", "acme")
    assert status == 0, err
    assert amazon.client_secret not in err


def test_the_new_manager_options_keep_their_documented_defaults() -> None:
    params = inspect.signature(at.AsyncTokenManager).parameters
    assert params["client_auth"].default == "post"
    assert params["authorization_max_age"].default is None
    assert params["reauth_warning"].default == 30 * 86400
    assert params["on_reauth_due"].default is None
    add = inspect.signature(at.AsyncTokenManager.add_account).parameters
    assert add["authorized_at"].kind is inspect.Parameter.KEYWORD_ONLY
    assert add["authorized_at"].default is None
    assert callable(at.BlockingTokenManager.set_client_secrets)
    assert callable(at.AsyncTokenManager.set_client_secrets)
    assert "authorized_at" in inspect.signature(at.BlockingTokenManager.add_account).parameters
    fields = inspect.signature(at.AccountStatus).parameters
    assert fields["authorized_at"].default is None
    assert fields["reauth_due_at"].default is None
    assert inspect.signature(at.Token).parameters["authorized_at"].default is None
