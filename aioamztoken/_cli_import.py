"""``aioamztoken import``: bring the refresh tokens of the tools users come from into a store.

Where those tools keep credentials (read from their source):

- **python-amazon-ad-api** (``ad_api/base/credential_provider.py``): the environment
  variables ``AD_API_REFRESH_TOKEN``, ``AD_API_CLIENT_ID``, ``AD_API_CLIENT_SECRET`` (and
  ``AD_API_PROFILE_ID``), which win over the file; else ``credentials.yml`` in the
  confuse configuration directory of the application ``python-ad-api``, one section per
  account (``default`` unless told otherwise) with ``refresh_token``, ``client_id``,
  ``client_secret`` and ``profile_id``.
- **python-amazon-sp-api** (``sp_api/base/credential_provider.py``): the environment
  variables ``SP_API_REFRESH_TOKEN``, ``LWA_APP_ID`` and ``LWA_CLIENT_SECRET``, each also
  suffixed ``_<account>`` for other accounts, which win over the file; else
  ``credentials.yml`` in the confuse directory of ``python-sp-api``, sections with
  ``refresh_token``, ``lwa_app_id`` and ``lwa_client_secret``.

confuse (``Configuration.config_dir``) takes ``$<APPNAME>DIR`` (``PYTHON-SP-APIDIR``) if
set; else the first of its platform's directories (on Unix ``~/.config``, then
``$XDG_CONFIG_HOME``, ``$XDG_CONFIG_DIRS`` or ``/etc/xdg``, then ``/etc``) whose
``<appname>/config.yaml`` exists, else the first of them. A ``credentials.yml`` found in
another of those directories is read too, when the chosen one has none.

Everything is read and checked before anything is written: a malformed file is one
error and the store is left as it was. Secrets are never printed.
"""

from __future__ import annotations

import argparse
import os
import platform
import sys
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from ._manager import AsyncTokenManager
from .stores._base import validate_account_id

__all__ = ["Found", "add_import_command", "confuse_dirs", "find_credentials", "run_import"]

AD_API = "ad-api"
SP_API = "sp-api"
#: Each tool: its name for people, its confuse application name, and the names its
#: credentials.yml sections use for the refresh token and the client id.
TOOLS: dict[str, tuple[str, str, str]] = {
    AD_API: ("python-amazon-ad-api", "python-ad-api", "client_id"),
    SP_API: ("python-amazon-sp-api", "python-sp-api", "lwa_app_id"),
}
CREDENTIALS_FILE = "credentials.yml"
#: A credentials.yml larger than this is refused unread (a bound on what is parsed).
MAX_FILE_SIZE = 1024 * 1024
_EXIT_OK, _EXIT_FAILURE, _EXIT_USAGE = 0, 1, 2


class ImportProblem(Exception):
    """Something the user must fix before anything is imported (one line, exit 2)."""


@dataclass(frozen=True)
class Found:
    """One refresh token found: which tool, where, under which account name."""

    tool: str
    origin: str
    """The file or environment variable it was read from."""
    name: str
    refresh_token: str
    client_id: str | None

    def __repr__(self) -> str:  # never the refresh token
        return f"Found(tool={self.tool!r}, origin={self.origin!r}, name={self.name!r})"


# ---------------------------------------------------------------------- locations


def confuse_dirs(environ: Mapping[str, str], system: str | None = None) -> list[Path]:
    """The directories confuse searches, in its order (``confuse.util.config_dirs``)."""
    system = platform.system() if system is None else system
    paths: list[str] = []
    xdg = [
        *([environ["XDG_CONFIG_HOME"]] if "XDG_CONFIG_HOME" in environ else []),
        *(environ["XDG_CONFIG_DIRS"].split(":") if "XDG_CONFIG_DIRS" in environ else ["/etc/xdg"]),
        "/etc",
    ]
    if system == "Darwin":
        paths = ["~/.config", "~/Library/Application Support", *xdg]
    elif system == "Windows":
        paths = ["~\\AppData\\Roaming", *([environ["APPDATA"]] if "APPDATA" in environ else [])]
    else:
        paths = ["~/.config", *xdg]
    found: list[Path] = []
    for path in paths:
        if not path:
            continue
        resolved = Path(os.path.abspath(os.path.expanduser(path)))
        if resolved not in found:
            found.append(resolved)
    return found


def credential_files(appname: str, environ: Mapping[str, str]) -> list[Path]:
    """Where ``credentials.yml`` of ``appname`` may be, the one the tool reads first."""
    override = environ.get(f"{appname.upper()}DIR")
    if override:
        return [Path(os.path.abspath(os.path.expanduser(override))) / CREDENTIALS_FILE]
    dirs = [d / appname for d in confuse_dirs(environ)]
    chosen = next((d for d in dirs if (d / "config.yaml").is_file()), dirs[0] if dirs else None)
    ordered = ([chosen] if chosen is not None else []) + [d for d in dirs if d != chosen]
    return [d / CREDENTIALS_FILE for d in ordered]


# ---------------------------------------------------------------------- reading


def _load_yaml(path: Path) -> Any:
    try:
        import yaml
    except ImportError:  # pragma: no cover - depends on the installation
        raise ImportProblem(
            f"{path} is YAML, and PyYAML is not installed: pip install 'aioamztoken[import]'"
        ) from None
    try:
        with path.open("rb") as file:
            data = file.read(MAX_FILE_SIZE + 1)
    except OSError as exc:
        raise ImportProblem(f"cannot read {path}: {exc.strerror or type(exc).__name__}") from None
    if len(data) > MAX_FILE_SIZE:
        raise ImportProblem(
            f"{path} is larger than {MAX_FILE_SIZE // 1024} KiB: not a credentials file; "
            "nothing was imported"
        )
    try:
        return yaml.safe_load(data)
    except yaml.YAMLError as exc:
        # The parser's own message can quote the line, which may hold a secret.
        mark = getattr(exc, "problem_mark", None)
        where = f" (line {mark.line + 1}, column {mark.column + 1})" if mark is not None else ""
        raise ImportProblem(
            f"{path} is not valid YAML{where}; nothing was imported: fix it and try again"
        ) from None
    except RecursionError:  # PyYAML composes nested collections recursively
        raise ImportProblem(
            f"{path} nests too deeply to be a credentials file; nothing was imported"
        ) from None


def read_file(tool: str, path: Path) -> list[Found]:
    """The accounts of one ``credentials.yml``; raise :class:`ImportProblem` if malformed."""
    document = _load_yaml(path)
    if document is None:
        return []
    if not isinstance(document, dict):
        raise ImportProblem(
            f"{path} does not hold a mapping of accounts; nothing was imported: fix it "
            "and try again"
        )
    id_key = TOOLS[tool][2]
    found: list[Found] = []
    for key, section in document.items():
        name = str(key)
        if name == "version" and not isinstance(section, dict):
            continue  # the format version both tools' templates carry
        if not isinstance(section, dict):
            raise ImportProblem(
                f"{path}: account {name!r} is not a mapping of credentials; nothing was "
                "imported: fix it and try again"
            )
        refresh_token = section.get("refresh_token")
        if refresh_token is None or refresh_token == "":
            continue  # both tools allow it (the token is then passed in code)
        if not isinstance(refresh_token, str) or not refresh_token.strip():
            raise ImportProblem(
                f"{path}: account {name!r} has a refresh_token that is not a string; nothing "
                "was imported: fix it and try again"
            )
        client_id = section.get(id_key)
        found.append(
            Found(
                tool,
                str(path),
                name,
                refresh_token.strip(),
                str(client_id) if client_id not in (None, "") else None,
            )
        )
    return found


def read_environment(tool: str, environ: Mapping[str, str]) -> list[Found]:
    """The accounts a tool takes from the environment."""
    if tool == AD_API:
        token = environ.get("AD_API_REFRESH_TOKEN", "").strip()
        if not token:
            return []
        return [
            Found(
                tool,
                "$AD_API_REFRESH_TOKEN",
                "default",
                token,
                environ.get("AD_API_CLIENT_ID") or None,
            )
        ]
    prefix = "SP_API_REFRESH_TOKEN"
    found = []
    for variable in sorted(environ):
        if variable != prefix and not variable.startswith(prefix + "_"):
            continue
        token = environ[variable].strip()
        if not token:
            continue
        if variable == prefix and environ.get(prefix + "_default", "").strip():
            continue  # the tool reads SP_API_REFRESH_TOKEN_default first for "default"
        account = variable[len(prefix) + 1 :] or "default"
        suffix = "" if variable == prefix else "_" + account
        client_id = environ.get("LWA_APP_ID" + suffix) or environ.get("LWA_APP_ID") or None
        found.append(Found(tool, "$" + variable, account, token, client_id))
    return found


def find_credentials(
    tools: list[str], environ: Mapping[str, str], file: Path | None = None
) -> tuple[list[Found], list[str]]:
    """Every account found for ``tools``, and notes for the user (never with a secret).

    The environment wins over the file for an account named in both, as in the tools.
    """
    found: list[Found] = []
    notes: list[str] = []
    for tool in tools:
        label, appname, _ = TOOLS[tool]
        if file is not None:
            paths = [file]
            if not file.is_file():
                raise ImportProblem(f"{file} does not exist or is not a file")
        else:
            paths = [p for p in credential_files(appname, environ) if p.is_file()][:1]
        from_file = read_file(tool, paths[0]) if paths else []
        from_env = [] if file is not None else read_environment(tool, environ)
        named = {f.name for f in from_env}
        for shadowed in (f for f in from_file if f.name in named):
            notes.append(
                f"{label}: account {shadowed.name!r} of {shadowed.origin} is overridden by the "
                "environment, as the tool itself does"
            )
        found.extend(from_env)
        found.extend(f for f in from_file if f.name not in named)
    return found, notes


def name_accounts(found: list[Found], prefix: str) -> tuple[dict[str, Found], list[str]]:
    """Account ids for the tokens found: the tool's account name (with ``prefix``), or
    ``<tool>-<name>`` where both tools use one name for different refresh tokens."""
    by_name: dict[str, list[Found]] = {}
    for item in found:
        by_name.setdefault(item.name, []).append(item)
    named: dict[str, Found] = {}
    notes: list[str] = []
    for name, items in by_name.items():
        if len({i.refresh_token for i in items}) == 1:
            named[prefix + name] = items[0]
            continue
        for item in items:
            named[f"{prefix}{item.tool}-{name}"] = item
        notes.append(
            f"account {name!r} is defined by both tools with different refresh tokens: "
            f"imported as {', '.join(repr(f'{prefix}{i.tool}-{name}') for i in items)}"
        )
    return named, notes


# ---------------------------------------------------------------------- the command


def add_import_command(commands: Any) -> None:
    """Register ``import`` on the CLI's subcommands."""
    command = commands.add_parser(
        "import",
        help="import the refresh tokens of python-amazon-ad-api and python-amazon-sp-api",
        description="Read the credentials.yml files and environment variables of "
        "python-amazon-ad-api (AD_API_*) and python-amazon-sp-api (SP_API_REFRESH_TOKEN, "
        "LWA_APP_ID, LWA_CLIENT_SECRET) and add each refresh token as an account. Nothing "
        "is written when a file is malformed. Secrets are never printed.",
    )
    command.add_argument(
        "sources",
        nargs="*",
        metavar="SOURCE",
        help=f"{AD_API} and/or {SP_API} (default: both)",
    )
    command.add_argument(
        "--file",
        type=Path,
        help="read this credentials.yml instead of the tool's own (give one SOURCE)",
    )
    command.add_argument("--dry-run", action="store_true", help="list what would be imported")
    command.add_argument("--prefix", default="", help="prepended to every account id")
    command.add_argument(
        "--replace",
        action="store_true",
        help="replace accounts the store already holds with another refresh token",
    )
    command.add_argument(
        "--authorized-at",
        metavar="DATE",
        help="when the accounts were authorized (YYYY-MM-DD, UTC); default now",
    )


def _parse_date(value: str) -> float:
    try:
        moment = datetime.fromisoformat(value)
    except ValueError:
        raise ImportProblem(
            f"--authorized-at wants a date such as 2026-01-31, not {value!r}"
        ) from None
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=timezone.utc)
    return moment.timestamp()


async def run_import(
    mgr: AsyncTokenManager, args: argparse.Namespace, environ: Mapping[str, str] | None = None
) -> int:
    """Run ``aioamztoken import``; return the exit status."""
    env = os.environ if environ is None else environ
    try:
        return await _run(mgr, args, env)
    except ImportProblem as exc:
        print(f"aioamztoken: error: {' '.join(str(exc).split())}", file=sys.stderr)
        return _EXIT_USAGE


async def _run(mgr: AsyncTokenManager, args: argparse.Namespace, env: Mapping[str, str]) -> int:
    unknown = [s for s in args.sources if s not in TOOLS]
    if unknown:
        raise ImportProblem(f"unknown SOURCE {unknown[0]!r}: expected {AD_API} or {SP_API}")
    tools = list(dict.fromkeys(args.sources)) or [AD_API, SP_API]
    if args.file is not None and len(tools) != 1:
        raise ImportProblem(f"--file needs one SOURCE: {AD_API} or {SP_API}")
    authorized_at = None if args.authorized_at is None else _parse_date(args.authorized_at)
    found, notes = find_credentials(tools, env, args.file)
    named, naming_notes = name_accounts(found, args.prefix)
    notes += naming_notes
    for note in notes:
        print(f"note: {note}", file=sys.stderr)
    if not named:
        searched = " and ".join(TOOLS[t][0] for t in tools)
        raise ImportProblem(
            f"found no refresh token of {searched}: no credentials.yml with one, and no "
            "refresh token in the environment (see 'aioamztoken import --help')"
        )
    plan: list[tuple[str, Found, str]] = []  # account id, what, "new" | "replace" | "same"
    conflicts = []
    for account_id, item in sorted(named.items()):
        try:
            validate_account_id(account_id)
        except ValueError as exc:  # checked before anything is written
            raise ImportProblem(
                f"{item.origin}: account {account_id!r} cannot be imported ({exc}); nothing "
                "was imported: rename it, or pass --prefix"
            ) from None
        stored = await mgr.store.load(account_id)
        if stored is None:
            plan.append((account_id, item, "new"))
        elif stored.refresh_token == item.refresh_token:
            plan.append((account_id, item, "same"))
        else:
            plan.append((account_id, item, "replace"))
            conflicts.append(account_id)
    if conflicts and not args.replace and not args.dry_run:
        raise ImportProblem(
            f"the store already holds {', '.join(map(repr, conflicts))} with another refresh "
            "token; nothing was imported: pass --replace, or --prefix to import them under "
            "other names"
        )
    if args.client_id and any(i.client_id not in (None, args.client_id) for _, i, _ in plan):
        print(
            "note: some accounts were issued to another client id than the configured one: "
            "their refresh tokens work only with their own app's client id and secret",
            file=sys.stderr,
        )
    verb = "would import" if args.dry_run else "imported"
    done = 0
    for account_id, item, action in plan:
        label = TOOLS[item.tool][0]
        if action == "same":
            print(f"{account_id!r} is already in the store (from {label}): left as is")
            continue
        if action == "replace" and not args.replace:
            print(f"would replace {account_id!r} from {label} ({item.origin}): needs --replace")
            continue
        if not args.dry_run:
            await mgr.add_account(account_id, item.refresh_token, authorized_at=authorized_at)
        done += 1
        what = "replaced" if action == "replace" and not args.dry_run else verb
        print(f"{what} {account_id!r} from {label} ({item.origin})")
    summary = f"{verb} {done} account{'s' if done != 1 else ''}"
    print(summary + (" (dry run: nothing was written)" if args.dry_run else ""), file=sys.stderr)
    return _EXIT_OK
