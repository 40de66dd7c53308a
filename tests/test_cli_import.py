"""``aioamztoken import``: credentials laid out as python-amazon-ad-api and
python-amazon-sp-api lay them out (confuse directories, credentials.yml sections, their
environment variables), imported into a store, with secrets never printed."""

from __future__ import annotations

import asyncio
import os
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import pytest

import aioamztoken as at
from aioamztoken._cli_import import confuse_dirs
from aioamztoken.testing import AmazonEmulator

pytest.importorskip("yaml", reason="PyYAML is not installed: pip install 'aioamztoken[import]'")

AD_SECRET = "amzn1.oa2-cs.v1.adadadadadad"
SP_SECRET = "amzn1.oa2-cs.v1.spspspspspsp"


@dataclass
class Done:
    status: int
    stdout: str
    stderr: str


@dataclass
class Setup:
    env: dict[str, str]
    home: Path
    store: Path
    secrets: list[str]

    def file_store(self) -> at.FileTokenStore:
        return at.FileTokenStore(self.store)


@pytest.fixture
def setup(tmp_path: Path, emulator: AmazonEmulator) -> Setup:
    home = tmp_path / "home"
    home.mkdir()
    # The environment of this process (coverage's variables included), less whatever the
    # tools or aioamztoken would read from it.
    tool_variables = ("AIOAMZTOKEN_", "AD_API_", "SP_API_", "LWA_", "XDG_CONFIG", "PYTHON-")
    env = {k: v for k, v in os.environ.items() if not k.startswith(tool_variables)}
    env |= {
        "HOME": str(home),
        "PYTHONUNBUFFERED": "1",
        "AIOAMZTOKEN_CLIENT_ID": emulator.client_id,
        "AIOAMZTOKEN_CLIENT_SECRET": emulator.client_secret,
        "AIOAMZTOKEN_TOKEN_URL": emulator.token_url,
        "AIOAMZTOKEN_STORE": f"file://{tmp_path / 'store' / 'tokens.json'}",
    }
    return Setup(env, home, tmp_path / "store" / "tokens.json", [AD_SECRET, SP_SECRET])


async def run(setup: Setup, *args: str, env: dict[str, str] | None = None) -> Done:
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "aioamztoken",
        *args,
        stdin=asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
        env={**setup.env, **(env or {})},
    )
    out, err = await asyncio.wait_for(proc.communicate(), 60)
    assert proc.returncode is not None
    return Done(proc.returncode, out.decode(), err.decode())


def write(path: Path, text: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    return path


def sp_api_file(directory: Path, tokens: dict[str, str]) -> Path:
    """credentials.yml as python-amazon-sp-api's template lays it out."""
    lines = ["version: '1.0'", ""]
    for name, token in tokens.items():
        lines += [
            f"{name}:",
            f"  refresh_token: '{token}'",
            "  lwa_app_id: 'amzn1.application-oa2-client.sp'",
            f"  lwa_client_secret: '{SP_SECRET}'",
            "",
        ]
    return write(directory / "python-sp-api" / "credentials.yml", "\n".join(lines))


def ad_api_file(directory: Path, tokens: dict[str, str]) -> Path:
    """credentials.yml as python-amazon-ad-api's documentation lays it out."""
    lines = ["version: '1.0'", ""]
    for name, token in tokens.items():
        lines += [
            f"{name}:",
            f"  refresh_token: '{token}'",
            "  client_id: 'amzn1.application-oa2-client.ad'",
            f"  client_secret: '{AD_SECRET}'",
            "  profile_id: '3514317160964525'",
            "",
        ]
    return write(directory / "python-ad-api" / "credentials.yml", "\n".join(lines))


def assert_no_secret(done: Done, secrets: list[str]) -> None:
    for secret in secrets:
        assert secret not in done.stdout
        assert secret not in done.stderr
    assert "Atzr|" not in done.stdout + done.stderr


# ------------------------------------------------------------------------------ files


async def test_dry_run_lists_both_tools_accounts_and_writes_nothing(
    setup: Setup, emulator: AmazonEmulator
) -> None:
    config = setup.home / ".config"  # confuse's first directory on Unix
    sp = {
        "default": emulator.issue_refresh_token("seller"),
        "eu_shop": emulator.issue_refresh_token("eu"),
    }
    ad = {"brand_us": emulator.issue_refresh_token("brand")}
    sp_api_file(config, sp)
    ad_api_file(config, ad)
    done = await run(setup, "import", "--dry-run")
    assert done.status == 0, done
    assert "would import 'default' from python-amazon-sp-api" in done.stdout
    assert "would import 'eu_shop' from python-amazon-sp-api" in done.stdout
    assert "would import 'brand_us' from python-amazon-ad-api" in done.stdout
    assert str(config / "python-sp-api" / "credentials.yml") in done.stdout
    assert "would import 3 accounts" in done.stderr
    assert not setup.store.exists()
    assert_no_secret(done, [*setup.secrets, *sp.values(), *ad.values()])


async def test_import_adds_each_refresh_token_and_the_accounts_work(
    setup: Setup, emulator: AmazonEmulator
) -> None:
    config = setup.home / ".config"
    sp = {"default": emulator.issue_refresh_token("seller")}
    ad = {"brand_us": emulator.issue_refresh_token("brand"), "empty": ""}
    sp_api_file(config, sp)
    ad_api_file(config, ad)
    before = time.time()
    done = await run(setup, "import")
    assert done.status == 0, done
    assert done.stdout.splitlines() == [
        f"imported 'brand_us' from python-amazon-ad-api ({config / 'python-ad-api' / 'credentials.yml'})",
        f"imported 'default' from python-amazon-sp-api ({config / 'python-sp-api' / 'credentials.yml'})",
    ]
    assert_no_secret(done, [*setup.secrets, *sp.values(), *(v for v in ad.values() if v)])
    store = setup.file_store()
    assert await store.accounts() == ["brand_us", "default"]
    stored = await store.load("default")
    assert stored is not None
    assert stored.refresh_token == sp["default"]
    assert stored.authorized_at is not None
    assert stored.authorized_at >= before - 1
    assert emulator.token_requests == 0  # importing makes no network call

    token = await run(setup, "token", "brand_us")
    assert token.status == 0, token
    assert token.stdout.strip() == emulator.current_access_token("brand")

    again = await run(setup, "import")
    assert again.status == 0, again
    assert (
        "'default' is already in the store (from python-amazon-sp-api): left as is" in again.stdout
    )
    assert "imported 0 accounts" in again.stderr


async def test_xdg_config_home_and_the_confuse_dir_variable_are_read(
    setup: Setup, emulator: AmazonEmulator, tmp_path: Path
) -> None:
    token = emulator.issue_refresh_token("x")
    sp_api_file(tmp_path / "xdg", {"xdg_account": token})
    done = await run(
        setup, "import", "sp-api", "--dry-run", env={"XDG_CONFIG_HOME": str(tmp_path / "xdg")}
    )
    assert done.status == 0, done
    assert "would import 'xdg_account'" in done.stdout

    elsewhere = tmp_path / "elsewhere"
    sp_api_file(elsewhere, {"from_dir_var": token})
    done = await run(
        setup,
        "import",
        "sp-api",
        "--dry-run",
        env={
            "PYTHON-SP-APIDIR": str(elsewhere / "python-sp-api"),
            "XDG_CONFIG_HOME": str(tmp_path / "xdg"),
        },
    )
    assert done.status == 0, done
    assert "from_dir_var" in done.stdout
    assert "xdg_account" not in done.stdout


async def test_file_option_prefix_and_authorized_at(
    setup: Setup, emulator: AmazonEmulator, tmp_path: Path
) -> None:
    path = ad_api_file(tmp_path / "mine", {"default": emulator.issue_refresh_token("a")})
    no_source = await run(setup, "import", "--file", str(path))
    assert no_source.status == 2
    assert "--file needs one SOURCE" in no_source.stderr
    done = await run(
        setup,
        "import",
        "ad-api",
        "--file",
        str(path),
        "--prefix",
        "ads-",
        "--authorized-at",
        "2026-01-31",
    )
    assert done.status == 0, done
    assert "imported 'ads-default' from python-amazon-ad-api" in done.stdout
    stored = await setup.file_store().load("ads-default")
    assert stored is not None
    assert stored.authorized_at == 1769817600.0  # 2026-01-31T00:00:00Z
    bad_date = await run(setup, "import", "ad-api", "--file", str(path), "--authorized-at", "soon")
    assert bad_date.status == 2
    assert "--authorized-at" in bad_date.stderr
    unknown = await run(setup, "import", "mws")
    assert unknown.status == 2
    assert "unknown SOURCE 'mws'" in unknown.stderr
    missing = await run(setup, "import", "sp-api", "--file", str(tmp_path / "nope.yml"))
    assert missing.status == 2
    assert "does not exist" in missing.stderr


async def test_the_same_name_in_both_tools_is_kept_apart(
    setup: Setup, emulator: AmazonEmulator
) -> None:
    config = setup.home / ".config"
    shared = emulator.issue_refresh_token("both")
    sp_api_file(config, {"default": emulator.issue_refresh_token("s"), "same": shared})
    ad_api_file(config, {"default": emulator.issue_refresh_token("a"), "same": shared})
    done = await run(setup, "import")
    assert done.status == 0, done
    assert await setup.file_store().accounts() == ["ad-api-default", "same", "sp-api-default"]
    assert "defined by both tools" in done.stderr


# ------------------------------------------------------------------------------ environment


async def test_environment_variables_of_both_tools(setup: Setup, emulator: AmazonEmulator) -> None:
    ad, sp, other = (emulator.issue_refresh_token(n) for n in ("ad", "sp", "other"))
    sp_api_file(setup.home / ".config", {"default": emulator.issue_refresh_token("shadowed")})
    env = {
        "AD_API_REFRESH_TOKEN": ad,
        "AD_API_CLIENT_ID": "amzn1.application-oa2-client.ad",
        "AD_API_CLIENT_SECRET": AD_SECRET,
        "SP_API_REFRESH_TOKEN": sp,
        "SP_API_REFRESH_TOKEN_OTHER_SHOP": other,
        "LWA_APP_ID": "amzn1.application-oa2-client.sp",
        "LWA_CLIENT_SECRET": SP_SECRET,
    }
    done = await run(setup, "import", "sp-api", env=env)
    assert done.status == 0, done
    assert "imported 'default' from python-amazon-sp-api ($SP_API_REFRESH_TOKEN)" in done.stdout
    assert (
        "imported 'OTHER_SHOP' from python-amazon-sp-api ($SP_API_REFRESH_TOKEN_OTHER_SHOP)"
        in done.stdout
    )
    assert "overridden by the environment" in done.stderr
    store = setup.file_store()
    assert (await store.load("default")).refresh_token == sp  # type: ignore[union-attr]
    assert (await store.load("OTHER_SHOP")).refresh_token == other  # type: ignore[union-attr]
    assert_no_secret(done, [AD_SECRET, SP_SECRET, ad, sp, other])

    both = await run(setup, "import", "--prefix", "x-", env=env)
    assert both.status == 0, both
    assert "x-ad-api-default" in both.stdout
    assert "x-sp-api-default" in both.stdout


async def test_nothing_to_import_is_an_error(setup: Setup) -> None:
    done = await run(setup, "import")
    assert done.status == 2
    assert done.stderr.startswith("aioamztoken: error: found no refresh token")
    assert len(done.stderr.strip().splitlines()) == 1


# ------------------------------------------------------------------------------ refusals


@pytest.mark.parametrize(
    ("text", "problem"),
    [
        (
            "default:\n  refresh_token: 'Atzr|SECRETVALUE'\n  lwa_app_id: [unclosed\n",
            "not valid YAML",
        ),
        ("- Atzr|SECRETVALUE\n", "does not hold a mapping"),
        ("default: Atzr|SECRETVALUE\n", "is not a mapping"),
        ("default:\n  refresh_token: [Atzr|SECRETVALUE]\n", "refresh_token that is not a string"),
        ("default:\n  refresh_token: 'Atzr|SECRETVALUE'\n\tbad: tab\n", "not valid YAML"),
    ],
    ids=["syntax", "list", "scalar-section", "token-not-a-string", "tab"],
)
async def test_a_malformed_file_is_one_clear_error_and_nothing_is_written(
    setup: Setup, emulator: AmazonEmulator, text: str, problem: str
) -> None:
    store = setup.file_store()
    await store.save("existing", at.Token("", emulator.issue_refresh_token("e"), 0.0))
    before = setup.store.read_bytes()
    sp_api_file(setup.home / ".config", {"fine": emulator.issue_refresh_token("fine")})
    write(setup.home / ".config" / "python-ad-api" / "credentials.yml", text)
    done = await run(setup, "import")
    assert done.status == 2, done
    assert done.stdout == ""
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1, done.stderr
    assert lines[0].startswith("aioamztoken: error: ")
    assert problem in lines[0]
    assert "python-ad-api" in lines[0]
    assert "Traceback" not in done.stderr
    assert "SECRETVALUE" not in done.stderr
    assert setup.store.read_bytes() == before


async def test_an_account_held_with_another_token_needs_replace(
    setup: Setup, emulator: AmazonEmulator
) -> None:
    store = setup.file_store()
    await store.save("default", at.Token("", emulator.issue_refresh_token("old"), 0.0))
    await store.save("keep", at.Token("", emulator.issue_refresh_token("keep"), 0.0))
    new = emulator.issue_refresh_token("new")
    sp_api_file(
        setup.home / ".config", {"default": new, "fresh": emulator.issue_refresh_token("f")}
    )
    before = setup.store.read_bytes()
    refused = await run(setup, "import")
    assert refused.status == 2
    assert "already holds 'default'" in refused.stderr
    assert setup.store.read_bytes() == before  # not even 'fresh' was written
    dry = await run(setup, "import", "--dry-run")
    assert dry.status == 0
    assert "would replace 'default'" in dry.stdout
    replaced = await run(setup, "import", "--replace")
    assert replaced.status == 0, replaced
    assert "replaced 'default' from python-amazon-sp-api" in replaced.stdout
    assert (await store.load("default")).refresh_token == new  # type: ignore[union-attr]
    assert await store.accounts() == ["default", "fresh", "keep"]


async def test_another_client_id_is_pointed_out_without_printing_it(
    setup: Setup, emulator: AmazonEmulator
) -> None:
    sp_api_file(setup.home / ".config", {"default": emulator.issue_refresh_token("x")})
    done = await run(setup, "import", "--dry-run")
    assert done.status == 0
    assert "another client id" in done.stderr
    assert "amzn1.application-oa2-client.sp" not in done.stderr + done.stdout


def test_confuse_directories_per_platform(tmp_path: Path) -> None:
    env = {
        "XDG_CONFIG_HOME": "/x/config",
        "XDG_CONFIG_DIRS": "/a:/b",
        "APPDATA": "C:/Users/u/AppData",
    }
    home = Path("~").expanduser()
    assert confuse_dirs(env, "Linux") == [
        home / ".config",
        Path("/x/config"),
        Path("/a"),
        Path("/b"),
        Path("/etc"),
    ]
    assert confuse_dirs({}, "Linux") == [home / ".config", Path("/etc/xdg"), Path("/etc")]
    assert confuse_dirs({}, "Darwin")[:2] == [
        home / ".config",
        home / "Library" / "Application Support",
    ]
    assert len(confuse_dirs(env, "Windows")) == 2


async def test_an_oversized_or_unreadable_file_is_refused(setup: Setup, tmp_path: Path) -> None:
    big = write(tmp_path / "big" / "credentials.yml", "# padding\n" * 120_000)
    done = await run(setup, "import", "sp-api", "--file", str(big))
    assert done.status == 2
    assert "larger than 1024 KiB" in done.stderr
    folder = tmp_path / "folder.yml"
    folder.mkdir()
    done = await run(setup, "import", "sp-api", "--file", str(folder))
    assert done.status == 2
    assert "not a file" in done.stderr
    write(setup.home / ".config" / "python-sp-api" / "credentials.yml", "")
    done = await run(setup, "import", "sp-api")
    assert done.status == 2
    assert "found no refresh token of python-amazon-sp-api" in done.stderr
