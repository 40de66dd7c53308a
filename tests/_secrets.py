"""Assert that no secret hides anywhere an error reporter looks in an exception.

Sentry and its kind walk ``__cause__`` and ``__context__`` (whether or not
``__suppress_context__`` hides it from tracebacks) and record each error's message,
``args`` and attributes. :func:`assert_no_secret_in_chain` looks in all of them.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from typing import Any


def chain(exc: BaseException) -> Iterator[BaseException]:
    """``exc`` and every error reachable from it: causes, contexts, group members."""
    seen: set[int] = set()
    todo = [exc]
    while todo:
        current = todo.pop()
        if id(current) in seen:
            continue
        seen.add(id(current))
        yield current
        for linked in (current.__cause__, current.__context__):
            if linked is not None:
                todo.append(linked)
        todo.extend(e for e in getattr(current, "exceptions", ()) if isinstance(e, BaseException))


def _texts(value: Any, depth: int = 0) -> Iterator[str]:
    if depth > 4:
        return
    if isinstance(value, (bytes, bytearray, memoryview)):
        yield bytes(value).decode("utf-8", "replace")
        return
    if isinstance(value, str):
        yield value
        return
    if isinstance(value, dict):
        for k, v in value.items():
            yield from _texts(k, depth + 1)
            yield from _texts(v, depth + 1)
        return
    if isinstance(value, (list, tuple, set, frozenset)):
        for item in value:
            yield from _texts(item, depth + 1)
        return
    try:
        yield repr(value)
    except Exception:
        return


def exception_texts(exc: BaseException) -> Iterator[str]:
    """Every piece of text an error carries: str, repr, args, notes and attributes."""
    yield str(exc)
    yield repr(exc)
    yield from _texts(exc.args)
    yield from _texts(getattr(exc, "__notes__", ()))
    for name in dir(exc):
        if name.startswith("__") or name in ("args", "with_traceback", "add_note"):
            continue
        try:
            value = getattr(exc, name)
        except Exception:
            continue
        if callable(value) and not isinstance(value, (str, bytes)):
            continue
        yield from _texts(value)


def assert_no_secret_in_chain(exc: BaseException, secrets: Iterable[str]) -> None:
    """Fail naming the error and the secret if any error in ``exc``'s chain carries one."""
    wanted = [s for s in secrets if s]
    assert wanted, "no secrets to look for"
    for error in chain(exc):
        for text in exception_texts(error):
            for secret in wanted:
                assert secret not in text, (
                    f"{type(error).__qualname__} in the chain of {type(exc).__qualname__} "
                    f"carries a secret ({secret[:6]}...) in {text[:200]!r}"
                )


def assert_no_secret_in(text: str, secrets: Iterable[str]) -> None:
    for secret in secrets:
        assert secret
        assert secret not in text, f"secret {secret[:6]}... in {text[:300]!r}"
