"""Token answers that a real grant produced, then spoiled: the faults a server (or a proxy
in front of it) can send *after* it has acted on a request.

:meth:`AmazonEmulator.fail_next` answers instead of the grant: nothing is spent. Here the
grant really happens (the code is used up, a rotated refresh token is revoked) and only
the answer changes, which is what tells a client that retries an unusable 200 from one
that does not.
"""

from __future__ import annotations

import collections
import json
import threading
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from aiohttp import hdrs, web

__all__ = ["TokenAnswerFaults"]


@dataclass(frozen=True, slots=True)
class _Spoil:
    omit: frozenset[str]
    replace: Mapping[str, Any]
    nest: int
    pad_to: int

    def response(self, payload: dict[str, Any]) -> web.Response:
        answer: dict[str, Any] = {k: v for k, v in payload.items() if k not in self.omit}
        answer.update(self.replace)
        text = json.dumps(answer)
        if self.nest:
            # An extra member nested ``nest`` levels deep, written out by hand: json.dumps
            # would recurse once per level.
            deep = '{"nested": ' * self.nest + "null" + "}" * self.nest
            text = text[:-1] + (', "extra": ' if answer else '"extra": ') + deep + "}"
        body = text.encode("utf-8")
        if self.pad_to > len(body):
            body += b" " * (self.pad_to - len(body))  # trailing whitespace: still valid JSON
        return web.Response(
            status=200,
            body=body,
            headers={
                hdrs.CONTENT_TYPE: "application/json",
                hdrs.CACHE_CONTROL: "no-store",
                hdrs.PRAGMA: "no-cache",
            },
        )


class TokenAnswerFaults:
    """The :meth:`spoil_next_answers` knob of :class:`AmazonEmulator`."""

    _lock: threading.Lock

    def spoil_next_answers(
        self,
        count: int = 1,
        *,
        omit: Iterable[str] = (),
        replace: Mapping[str, Any] | None = None,
        nest: int = 0,
        pad_to: int = 0,
    ) -> None:
        """Make the next ``count`` successful token grants answer a spoiled 200.

        The grant is made first: a code is spent, a rotated refresh token revoked, the
        new tokens are valid. Then the answer drops the members named in ``omit`` (say
        ``"refresh_token"``), takes the values in ``replace`` (say an ``access_token``
        holding ``"\\r\\n"``), gains a member nested ``nest`` levels deep, and is padded
        with trailing spaces to ``pad_to`` bytes (still valid JSON, just huge). Refusals
        (``invalid_grant``...) are not spoiled and do not use up the count.
        """
        if count < 0 or nest < 0 or pad_to < 0:
            raise ValueError("count, nest and pad_to must not be negative")
        spoil = _Spoil(frozenset(omit), dict(replace or {}), nest, pad_to)
        with self._lock:
            self._spoils().extend([spoil] * count)

    def _spoils(self) -> collections.deque[_Spoil]:
        queue: collections.deque[_Spoil] | None = self.__dict__.get("_spoil_queue")
        if queue is None:
            queue = self.__dict__["_spoil_queue"] = collections.deque()
        return queue

    def _spoiled_answer(self, payload: dict[str, Any]) -> web.Response | None:
        """The spoiled answer for a grant just made, or ``None`` to answer as usual."""
        with self._lock:
            queue = self._spoils()
            spoil = queue.popleft() if queue else None
        return None if spoil is None else spoil.response(payload)
