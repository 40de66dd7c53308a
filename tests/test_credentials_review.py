"""Regression tests from the review of credential lifecycles (issue 14): a secret answered
``invalid_grant`` counts as accepted, the audit line's wording, and ``aioamztoken import``
on deeply nested YAML, on both spellings of python-amazon-sp-api's default refresh token,
and on an account name no store can keep."""

from __future__ import annotations

import asyncio
import logging
import os
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest

from aioamztoken import (
    AsyncTokenManager,
    FileTokenStore,
    InvalidGrantError,
    MemoryTokenStore,
)
from aioamztoken.testing import AmazonEmulator

OLD = "amzn1.oa2-cs.v1.review-old"
MID = "amzn1.oa2-cs.v1.review-mid"
NEW = "amzn1.oa2-cs.v1.review-new"
REDIRECT = "https://review.example/callback"


def manager(amazon: AmazonEmulator, secrets: list[str] | tuple[str, ...]) -> AsyncTokenManager:
    return AsyncTokenManager(
        amazon.client_id, secrets, store=MemoryTokenStore(), token_url=amazon.token_url
    )


def audit_lines(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [
        r.getMessage()
        for r in caplog.records
        if r.name == "aioamztoken.audit" and "client-secret" in r.getMessage()
    ]


# ------------------------------------------------------------------------------ secrets


async def test_a_secret_answered_invalid_grant_is_used_from_then_on(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """The endpoint judges the grant only after it authenticated the client: the secret
    that got ``invalid_grant`` works, and the next account must not pay for #1 again."""
    caplog.set_level(logging.INFO, logger="aioamztoken")
    async with AmazonEmulator(client_secrets=[NEW]) as amazon, manager(amazon, [OLD, NEW]) as mgr:
        await mgr.add_account("revoked", "Atzr|never-issued-by-this-server")
        with pytest.raises(InvalidGrantError) as caught:
            await mgr.get_access_token("revoked")
        assert caught.value.attempts == 2
        assert [r.status for r in amazon.token_log] == [401, 400]
        await mgr.add_account("healthy", amazon.issue_refresh_token("healthy"))
        await mgr.get_access_token("healthy")
        assert [r.status for r in amazon.token_log] == [401, 400, 200]
    assert audit_lines(caplog) == [
        "client-secret account='revoked' outcome=ok: secret #2 of 2 was accepted after #1 "
        "was rejected"
    ]


async def test_a_spent_code_under_a_rejected_secret_then_a_good_code_costs_one_request() -> None:
    async with AmazonEmulator(client_secrets=[NEW]) as amazon, manager(amazon, (OLD, NEW)) as mgr:
        used = amazon.issue_code("first", redirect_uri=REDIRECT)
        await mgr.exchange_code("first", used, redirect_uri=REDIRECT)
        assert amazon.code_grants == 1
        mgr.set_client_secrets((OLD, NEW))  # a fresh list: OLD is tried first again
        with pytest.raises(InvalidGrantError):
            await mgr.exchange_code("again", used, redirect_uri=REDIRECT)
        before = amazon.token_requests
        code = amazon.issue_code("second", redirect_uri=REDIRECT)
        token = await mgr.exchange_code("second", code, redirect_uri=REDIRECT)
        assert token.authorized_at is not None
        assert amazon.token_requests == before + 1
        assert amazon.code_grants == 2
    assert [r.status for r in amazon.token_log] == [401, 200, 401, 400, 200]


async def test_the_audit_line_names_every_rejected_secret_by_position(
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.INFO, logger="aioamztoken")
    amazon = AmazonEmulator(client_secrets=[NEW])
    async with amazon, manager(amazon, (OLD, MID, NEW)) as mgr:
        await mgr.add_account("acme", amazon.issue_refresh_token("acme"))
        await mgr.refresh("acme")
        await mgr.refresh("acme")
    assert [r.status for r in amazon.token_log] == [401, 401, 200, 200]
    lines = audit_lines(caplog)
    assert lines == [
        "client-secret account='acme' outcome=ok: secret #3 of 3 was accepted after #1 and #2 "
        "were rejected"
    ]
    text = "\n".join(r.getMessage() for r in caplog.records)
    for secret in (OLD, MID, NEW):
        assert secret not in text


# ------------------------------------------------------------------------------ import


@dataclass
class Done:
    status: int
    stdout: str
    stderr: str


@pytest.fixture
def cli_env(tmp_path: Path) -> dict[str, str]:
    pytest.importorskip("yaml", reason="PyYAML is not installed: pip install 'aioamztoken[import]'")
    home = tmp_path / "home"
    home.mkdir()
    tool_variables = ("AIOAMZTOKEN_", "AD_API_", "SP_API_", "LWA_", "XDG_CONFIG", "PYTHON-")
    env = {k: v for k, v in os.environ.items() if not k.startswith(tool_variables)}
    return env | {
        "HOME": str(home),
        "PYTHONUNBUFFERED": "1",
        "AIOAMZTOKEN_STORE": (tmp_path / "store" / "tokens.json").as_uri(),
    }


def store_file(env: dict[str, str]) -> Path:
    return Path(env["AIOAMZTOKEN_STORE"].removeprefix("file://"))


def sp_api_credentials(env: dict[str, str], text: str) -> Path:
    path = Path(env["HOME"]) / ".config" / "python-sp-api" / "credentials.yml"
    path.parent.mkdir(parents=True)
    path.write_text(text)
    return path


async def run_cli(env: dict[str, str], *args: str) -> Done:
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "aioamztoken",
        *args,
        stdin=asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
        env=env,
    )
    out, err = await asyncio.wait_for(proc.communicate(), 60)
    assert proc.returncode is not None
    return Done(proc.returncode, out.decode(), err.decode())


def assert_one_clear_error(done: Done, *words: str) -> None:
    assert done.status == 2, done
    assert "Traceback" not in done.stderr
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1, done.stderr
    assert lines[0].startswith("aioamztoken: error: ")
    for word in words:
        assert word in lines[0]


async def test_import_of_deeply_nested_yaml_is_one_clear_error(cli_env: dict[str, str]) -> None:
    depth = 20_000  # far past Python's recursion limit, far below the 1 MiB bound
    path = sp_api_credentials(
        cli_env,
        "default:\n  refresh_token: Atzr|nested-secret\nextra: " + "[" * depth + "]" * depth,
    )
    done = await run_cli(cli_env, "import", "sp-api")
    assert_one_clear_error(done, str(path), "nothing was imported")
    assert "nested-secret" not in done.stdout + done.stderr
    assert not store_file(cli_env).exists()


async def test_import_prefers_sp_api_refresh_token_default_as_the_tool_does(
    cli_env: dict[str, str],
) -> None:
    """python-amazon-sp-api reads ``SP_API_REFRESH_TOKEN_default`` before
    ``SP_API_REFRESH_TOKEN`` for its ``default`` account: one account, the suffixed token."""
    env = cli_env | {
        "SP_API_REFRESH_TOKEN": "Atzr|plain-variable",
        "SP_API_REFRESH_TOKEN_default": "Atzr|suffixed-variable",
        "SP_API_REFRESH_TOKEN_germany": "Atzr|germany-variable",
    }
    dry = await run_cli(env, "import", "sp-api", "--dry-run")
    assert dry.status == 0, dry
    assert dry.stdout.splitlines() == [
        "would import 'default' from python-amazon-sp-api ($SP_API_REFRESH_TOKEN_default)",
        "would import 'germany' from python-amazon-sp-api ($SP_API_REFRESH_TOKEN_germany)",
    ]
    assert not store_file(env).exists()
    done = await run_cli(env, "import", "sp-api")
    assert done.status == 0, done
    for text in (dry.stdout, dry.stderr, done.stdout, done.stderr):
        assert "variable" not in text.replace("$SP_API", "")  # no token printed
    store = FileTokenStore(store_file(env))
    assert sorted(await store.accounts()) == ["default", "germany"]
    default = await store.load("default")
    assert default is not None
    assert default.refresh_token == "Atzr|suffixed-variable"


async def test_import_refuses_an_account_name_no_store_keeps_before_writing(
    cli_env: dict[str, str],
) -> None:
    path = sp_api_credentials(
        cli_env,
        'aaa:\n  refresh_token: Atzr|good-one\n"\\udc80broken":\n  refresh_token: Atzr|bad-name\n',
    )
    done = await run_cli(cli_env, "import", "sp-api")
    assert_one_clear_error(done, str(path), "nothing was imported")
    assert "good-one" not in done.stderr
    assert "bad-name" not in done.stderr
    assert not store_file(cli_env).exists()
