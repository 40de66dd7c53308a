"""The on-disk forms: JSON documents of tokens, and account ids as file names.

Decoding trusts nothing: every problem becomes a :class:`StorageError` that names the
file, says it was left untouched and what to do, and never quotes the file's contents.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable, Mapping
from typing import Any, TypeVar, overload

from .._errors import StorageError
from .._models import Token
from ._base import validate_account_id
from ._trust import announce_too_open

__all__ = [
    "FORMAT",
    "corrupt",
    "decode_account",
    "decode_file",
    "decode_index",
    "decode_name",
    "encode_account",
    "encode_file",
    "encode_index",
    "encode_name",
    "lock_name",
]

#: The format tag of every document; a later, incompatible layout gets a new tag.
FORMAT = "aioamztoken/1"

#: Longest file-name stem :func:`encode_name` produces (``NAME_MAX`` is 255 bytes).
MAX_NAME = 240

# Kept as is in file names: lower case only, so that names stay distinct on
# case-insensitive file systems (upper case letters are escaped).
_SAFE = frozenset("abcdefghijklmnopqrstuvwxyz0123456789-_.@+")
_HEX = "0123456789ABCDEF"


_E = TypeVar("_E", bound=StorageError)


@overload
def corrupt(location: str, problem: str) -> StorageError: ...
@overload
def corrupt(location: str, problem: str, *, error: type[_E]) -> _E: ...
def corrupt(
    location: str, problem: str, *, error: type[StorageError] = StorageError
) -> StorageError:
    """The error (``error``, a StorageError class) for unreadable data at ``location``.

    ``problem`` must not quote the data.
    """
    return error(
        f"{location} {problem}. It was left untouched: move it aside or restore it from a "
        "backup, then try again.",
        location=location,
    )


# ---------------------------------------------------------------------------- documents


def encode_file(accounts: Mapping[str, Token]) -> bytes:
    """The document of a whole :class:`FileTokenStore`: indented, keys sorted."""
    return _dump({"format": FORMAT, "accounts": {a: t.to_dict() for a, t in accounts.items()}})


def decode_file(data: bytes, location: str) -> dict[str, Token]:
    """The accounts held by a :func:`encode_file` document; raise StorageError otherwise."""
    document = _load_document(data, location, {"format", "accounts"})
    records = document["accounts"]
    if not isinstance(records, dict):
        raise corrupt(location, 'has an "accounts" member that is not a JSON object')
    accounts: dict[str, Token] = {}
    for number, (account_id, record) in enumerate(records.items(), 1):
        where = f'account #{number} of "accounts"'
        accounts[_account_id(account_id, location, where)] = _token(record, location, where)
    announce_too_open(location)  # only now: a file that is not ours is an error, not this
    return accounts


def encode_account(account_id: str, token: Token) -> bytes:
    """The document of one account of a :class:`DirectoryTokenStore`."""
    return _dump({"format": FORMAT, "account_id": account_id, "token": token.to_dict()})


def decode_account(data: bytes, location: str) -> tuple[str, Token]:
    """The account id and token of an :func:`encode_account` document."""
    document = _load_document(data, location, {"format", "account_id", "token"})
    account_id = _account_id(document["account_id"], location, '"account_id"')
    token = _token(document["token"], location, '"token"')
    announce_too_open(location)
    return account_id, token


def encode_index(account_ids: Iterable[str]) -> bytes:
    """The document listing the accounts of a store that cannot list its entries (a keyring)."""
    return _dump({"format": FORMAT, "index": sorted(account_ids)})


def decode_index(data: bytes, location: str) -> list[str]:
    """The account ids of an :func:`encode_index` document, each once."""
    document = _load_document(data, location, {"format", "index"})
    entries = document["index"]
    if not isinstance(entries, list):
        raise corrupt(location, 'has an "index" member that is not a JSON array')
    account_ids = [
        _account_id(entry, location, f'entry #{number} of "index"')
        for number, entry in enumerate(entries, 1)
    ]
    if len(set(account_ids)) != len(account_ids):
        raise corrupt(location, 'lists an account twice in "index"')
    return account_ids


def _dump(document: dict[str, Any]) -> bytes:
    try:
        text = json.dumps(document, indent=2, sort_keys=True, ensure_ascii=False)
        return (text + "\n").encode("utf-8")
    except UnicodeEncodeError:
        # A lone surrogate in a token (json.loads can produce one): keep it as an escape.
        text = json.dumps(document, indent=2, sort_keys=True, ensure_ascii=True)
        return (text + "\n").encode("ascii")


def _load_document(data: bytes, location: str, members: set[str]) -> dict[str, Any]:
    # Each error is raised outside the except block: json's errors hold the whole text
    # (JSONDecodeError.doc), and a __context__ would carry it to any error reporter.
    if not data.strip():
        raise corrupt(location, "is empty")
    problem: str | None = None
    try:
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        problem = f"is not UTF-8 text (bad byte at offset {exc.start})"
    if problem is not None:
        raise corrupt(location, problem)
    try:
        document = json.loads(text)
    except json.JSONDecodeError as exc:
        problem = f"is not valid JSON ({exc.msg} at line {exc.lineno}, column {exc.colno})"
    except (ValueError, RecursionError):  # an integer too long to parse, nesting too deep
        problem = "is not JSON that can be read"
    if problem is not None:
        raise corrupt(location, problem)
    if not isinstance(document, dict):
        raise corrupt(location, "does not hold a JSON object")
    if document.get("format") != FORMAT:
        raise corrupt(location, f'is not an {FORMAT!r} document (its "format" differs)')
    if set(document) != members:
        raise corrupt(location, f"does not have exactly the members {sorted(members)}")
    return document


# Messages say where the fault is, never what is there: the data may hold secrets.


def _account_id(value: Any, location: str, where: str) -> str:
    try:
        return validate_account_id(value)
    except (TypeError, ValueError):
        pass
    raise corrupt(location, f"has an invalid account id at {where}")


def _token(record: Any, location: str, where: str) -> Token:
    try:
        return Token.from_dict(record)
    except (ValueError, TypeError, OverflowError) as exc:
        # from_dict's messages name the faulty field, never its value.
        problem = f"has an invalid token record at {where} ({exc})"
    raise corrupt(location, problem)


# ---------------------------------------------------------------------------- file names


def encode_name(account_id: str) -> str:
    """A file-name stem for ``account_id`` that :func:`decode_name` turns back into it.

    Lower-case ASCII letters, digits and ``-_.@+`` are kept; every other UTF-8 byte
    becomes ``%XX``, as does a leading dot, so no name is hidden, ``.``, ``..`` or holds a
    ``/``. Raises ``ValueError`` for an id that is invalid or whose name would be longer
    than ``MAX_NAME``.
    """
    raw = validate_account_id(account_id).encode("utf-8")
    name = "".join(
        chr(byte) if chr(byte) in _SAFE and (i or byte != ord(".")) else f"%{byte:02X}"
        for i, byte in enumerate(raw)
    )
    if len(name) > MAX_NAME:
        raise ValueError(
            f"account id too long to be a file name ({len(name)} > {MAX_NAME} characters "
            "once encoded): use a FileTokenStore for such ids"
        )
    return name


def decode_name(name: str) -> str | None:
    """The account id whose :func:`encode_name` is ``name``, or ``None`` if there is none."""
    raw = bytearray()
    i = 0
    while i < len(name):
        char = name[i]
        if char == "%":
            digits = name[i + 1 : i + 3]
            if len(digits) != 2 or not set(digits) <= set(_HEX):
                return None
            raw.append(int(digits, 16))
            i += 3
        elif char in _SAFE:
            raw.append(ord(char))
            i += 1
        else:
            return None
    try:
        account_id = raw.decode("utf-8")
        canonical = encode_name(account_id)
    except ValueError:  # UnicodeDecodeError included
        return None
    return account_id if canonical == name else None


def lock_name(account_id: str) -> str:
    """The file-name stem of the lock of ``account_id``: fixed length, any id.

    Keyring entries are named so too: any id becomes a name every backend can keep.
    """
    digest = hashlib.sha256(validate_account_id(account_id).encode("utf-8")).hexdigest()
    return f"account-{digest}"
