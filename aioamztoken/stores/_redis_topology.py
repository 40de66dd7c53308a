"""Redis deployments other than one server: Cluster, Sentinel; and what every one shares:
key names, scripts that survive a missing ``EVALSHA``, and errors that name the ACL fix.

redis-py's async ``RedisCluster`` before 7.2 disconnected every connection of a node when
it refreshed the cluster's topology (on a ``MOVED`` reply, a failover, a connection
error), including connections other tasks were using at that moment; their next write
failed with ``'NoneType' object has no attribute 'writelines'`` (the stream writer was
gone). redis-py 7.2 (its pull request #3917) marks connections in use for a reconnect
once they are released instead, so the cluster store refuses an older redis-py.
"""

from __future__ import annotations

import hashlib
import re
import urllib.parse
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import Any

from .._errors import StorageError

__all__ = [
    "CLUSTER_MIN_REDIS",
    "CLUSTER_PRIVILEGE",
    "LEAST_PRIVILEGE",
    "AclDenied",
    "Script",
    "Topology",
    "acl_failure",
    "cluster_lock_key",
    "cluster_record_key",
    "denied_in_script",
    "describe_client",
    "is_cluster",
    "open_topology",
    "scan_accounts",
]

#: The oldest redis-py whose async RedisCluster is safe under concurrency (see above).
CLUSTER_MIN_REDIS = (7, 2)

#: The commands a RedisTokenStore needs, as an ACL rule for its keys (``~ns:*``): the
#: scripts' own commands count too. EVALSHA is optional (the store falls back to EVAL).
LEAST_PRIVILEGE = "+ping +hget +hkeys +set +eval +evalsha +get +del +hset +hdel +pexpire"
#: What a RedisTokenStore needs on a cluster besides (keys ``~{ns:*``): listing accounts
#: and the client's discovery of the slots.
CLUSTER_PRIVILEGE = "+scan +cluster|slots +cluster|shards +command"

_SCHEMES = ("redis+cluster", "rediss+cluster", "redis+sentinel", "rediss+sentinel")
_ESCAPED = {ord(c): f"%{ord(c):02X}" for c in "%:{}"}
_TOKEN_SUFFIX = b"}:token"
_LOCK_SUFFIX = b"}:lock"
_GLOB = re.compile(rb"([*?\[\]\\])")


# ---------------------------------------------------------------------------- key names


def _tag(namespace: str, account_id: str) -> bytes:
    # The namespace is escaped so that no ":" or brace in it can make two namespaces'
    # keys meet; the account id is kept as is. Redis hashes only what lies between the
    # first "{" and the first "}" after it: a record and its lock share that prefix, so
    # they share a slot even when the id holds a "}".
    ns = namespace.translate(_ESCAPED).encode("utf-8", "surrogatepass")
    return b"{" + ns + b":" + account_id.encode("utf-8")


def cluster_record_key(namespace: str, account_id: str) -> bytes:
    """The hash holding ``account_id``'s record on a cluster: ``{ns:account}:token``."""
    return _tag(namespace, account_id) + _TOKEN_SUFFIX


def cluster_lock_key(namespace: str, account_id: str) -> bytes:
    """The lock of ``account_id`` on a cluster: ``{ns:account}:lock``, in its record's slot."""
    return _tag(namespace, account_id) + _LOCK_SUFFIX


async def scan_accounts(client: Any, namespace: str) -> list[bytes]:
    """The account ids (bytes) with a record under ``namespace`` on every primary (SCAN)."""
    prefix = b"{" + namespace.translate(_ESCAPED).encode("utf-8", "surrogatepass") + b":"
    pattern = _GLOB.sub(rb"\\\1", prefix) + b"*" + _TOKEN_SUFFIX
    found = set()
    async for key in client.scan_iter(match=pattern, count=1000):
        raw = key if isinstance(key, bytes) else str(key).encode("utf-8")
        if raw.startswith(prefix) and raw.endswith(_TOKEN_SUFFIX):
            found.add(raw[len(prefix) : -len(_TOKEN_SUFFIX)])
    return sorted(found)


# ---------------------------------------------------------------------------- clients


def is_cluster(client: Any) -> bool:
    """True for a redis-py async ``RedisCluster``."""
    return hasattr(client, "nodes_manager") and hasattr(client, "get_primaries")


def _check_cluster_support(lib: Any) -> None:
    version = tuple(int(p) for p in re.findall(r"\d+", lib.__version__)[:2])
    if version < CLUSTER_MIN_REDIS:
        raise ImportError(
            f"a RedisTokenStore on a Redis Cluster needs redis-py >= "
            f"{'.'.join(map(str, CLUSTER_MIN_REDIS))} (found {lib.__version__}, whose "
            "cluster client breaks connections in use): pip install -U 'aioamztoken[redis]'"
        )


def describe_client(client: Any) -> tuple[str, str | None]:
    """How messages name the server(s) of ``client`` (no password), and its password."""
    if is_cluster(client):
        known = client.get_nodes() or list(client.nodes_manager.startup_nodes.values())
        nodes = ",".join(f"{n.host}:{n.port}" for n in known) or "?"
        kwargs = getattr(client.nodes_manager, "connection_kwargs", {})
        return f"redis+cluster://{nodes}", kwargs.get("password")
    pool = getattr(client, "connection_pool", None)
    kwargs = getattr(pool, "connection_kwargs", {})
    service = getattr(pool, "service_name", None)
    if service is not None:
        return f"redis+sentinel:///{service}", kwargs.get("password")
    if kwargs.get("path"):
        return f"unix://{kwargs['path']}", kwargs.get("password")
    host, port, db = kwargs.get("host", "?"), kwargs.get("port", "?"), kwargs.get("db", 0)
    return f"redis://{host}:{port}/{db}", kwargs.get("password")


@dataclass
class Topology:
    """A client built from a cluster or sentinel URL, how to name it, and what to close."""

    client: Any
    url: str
    password: str | None
    closers: Sequence[Callable[[], Awaitable[Any]]]


def _hosts(url: str, netloc: str) -> list[tuple[str, int]]:
    hosts = []
    for item in netloc.rpartition("@")[2].split(","):
        host, _, port = item.strip().rpartition(":")
        if not host:
            host, port = port, ""
        host = host.strip("[]")
        try:
            number = int(port) if port else None
        except ValueError:
            number = None
        if not host or (port and (number is None or not 0 < number < 65536)):
            raise ValueError(f"Redis URL {_shown(url)!r} has an invalid host:port {item!r}")
        hosts.append((host, number or 0))
    return hosts


def _shown(url: str) -> str:
    parts = urllib.parse.urlsplit(url)
    netloc = parts.netloc
    if "@" in netloc:
        userinfo, _, hosts = netloc.rpartition("@")
        user, colon, _ = userinfo.partition(":")
        netloc = f"{user}:***@{hosts}" if colon else f"{userinfo}@{hosts}"
    return f"{parts.scheme}://{netloc}{parts.path}"


def open_topology(
    lib: Any, url: str, *, max_connections: int, timeout: float
) -> Topology | None:
    """The client of a ``redis+cluster://`` or ``redis+sentinel://`` URL; ``None`` for others.

    ``redis+cluster://[user:password@]host:port[,host:port...]/`` names startup nodes;
    ``redis+sentinel://[user:password@]host:port[,host:port...]/SERVICE[/DB]`` names the
    sentinels and the monitored service (the credentials are the data nodes'). A
    ``rediss+`` scheme uses TLS. Other options: build the client and pass ``client=``.
    """
    scheme = url.partition(":")[0].lower()
    if scheme not in _SCHEMES:
        return None
    parts = urllib.parse.urlsplit(url)
    try:
        username = urllib.parse.unquote(parts.username) if parts.username else None
        password = urllib.parse.unquote(parts.password) if parts.password else None
    except ValueError:
        raise ValueError(f"Redis URL {_shown(url)!r} cannot be parsed") from None
    hosts = _hosts(url, parts.netloc)
    if parts.query:
        # redis-py's own URL parser is not used for these: its options would arrive as
        # strings. A client built by hand (client=) takes any option.
        raise ValueError(
            f"Redis URL {_shown(url)!r} has query parameters a {scheme}:// URL does not take "
            "(only namespace, key_env, key_keyring): pass client= a redis-py client instead"
        )
    tls = scheme.startswith("rediss")
    retry = lib.asyncio.retry.Retry(lib.backoff.ExponentialWithJitterBackoff(cap=0.5, base=0.05), 2)
    common: dict[str, Any] = {
        "username": username,
        "password": password,
        "socket_timeout": timeout,
        "socket_connect_timeout": timeout,
    }
    if tls:
        common["ssl"] = True
    shown = _shown(url)
    if scheme.endswith("cluster"):
        _check_cluster_support(lib)
        from redis.asyncio.cluster import ClusterNode

        if parts.path not in ("", "/"):
            raise ValueError(f"Redis URL {shown!r}: a cluster has no database number or path")
        client = _cluster_class(lib)(
            startup_nodes=[ClusterNode(h, p or 6379) for h, p in hosts],
            max_connections=max_connections,
            retry=retry,
            **common,
        )
        return Topology(client, shown, password, [client.aclose])
    from redis.asyncio.sentinel import Sentinel

    path = [p for p in parts.path.split("/") if p]
    if not path or len(path) > 2 or (len(path) == 2 and not path[1].isdigit()):
        raise ValueError(f"Redis URL {shown!r} must name the service: .../SERVICE[/DB]")
    sentinel_kwargs = {"socket_timeout": timeout, "socket_connect_timeout": timeout}
    sentinel = Sentinel(  # type: ignore[no-untyped-call]
        [(h, p or 26379) for h, p in hosts], sentinel_kwargs=sentinel_kwargs
    )
    # A failover takes seconds: commands keep retrying (on a fresh lookup of the master)
    # for about that long before giving up.
    failover_retry = lib.asyncio.retry.Retry(
        lib.backoff.ExponentialWithJitterBackoff(cap=1.0, base=0.05), 12
    )
    client = sentinel.master_for(
        urllib.parse.unquote(path[0]),
        connection_pool_class=_blocking_sentinel_pool(),
        timeout=None,  # waiting for a free connection; each command has its own
        db=int(path[1]) if len(path) == 2 else 0,
        max_connections=max_connections,
        retry=failover_retry,
        **common,
    )
    closers = [client.aclose, *(s.aclose for s in sentinel.sentinels)]
    return Topology(client, shown, password, closers)


_CLUSTER_CLASS: Any = None

#: Attempts of one command on a cluster client when its connection was broken under it.
_CLUSTER_ATTEMPTS = 5


def _cluster_class(lib: Any) -> Any:
    """A ``RedisCluster`` that survives redis-py's remaining race under concurrency.

    Seen with redis-py 8.1 (2 to 6 of 300 concurrent saves failed): once a command meets
    a ``ConnectionError``, the client disconnects the node's idle connections
    (``disconnect_free_connections``) in tasks that run a moment later, by which time
    other tasks may have taken those connections and begun to use them. Those then fail
    with ``'NoneType' object has no attribute 'writelines'`` (nothing was sent) or a
    lost connection (the command may have run). Every command this store sends may run
    twice (reads; compare-and-set scripts; a lock's SET NX, whose retry the store
    checks), so such failures are retried a few times with a short pause, and at most
    ``max_connections`` commands are in flight (beyond that redis-py raises
    ``MaxConnectionsError`` instead of waiting).
    """
    global _CLUSTER_CLASS
    if _CLUSTER_CLASS is not None:
        return _CLUSTER_CLASS
    import asyncio
    import random

    from redis.asyncio.cluster import RedisCluster

    class SafeRedisCluster(RedisCluster):
        def __init__(self, *args: Any, **kwargs: Any) -> None:
            super().__init__(*args, **kwargs)
            self._aioamztoken_slots = asyncio.Semaphore(kwargs["max_connections"])
            self._aioamztoken_budget = float(kwargs["socket_timeout"])

        async def execute_command(self, *args: Any, **kwargs: Any) -> Any:
            loop = asyncio.get_running_loop()
            # The race fails at once; a server that is down fails after timeouts: retry
            # only while the time spent is under one timeout, so an outage is still
            # reported as soon as redis-py's own retries end.
            async with self._aioamztoken_slots:
                deadline = loop.time() + self._aioamztoken_budget
                for attempt in range(1, _CLUSTER_ATTEMPTS + 1):
                    try:
                        return await super().execute_command(*args, **kwargs)
                    except (lib.exceptions.ConnectionError, AttributeError) as exc:
                        broken = not isinstance(exc, AttributeError) or "writelines" in str(exc)
                        last = attempt == _CLUSTER_ATTEMPTS or loop.time() > deadline
                        if not broken or last:
                            raise
                    await asyncio.sleep(random.uniform(0.01, 0.05) * attempt)
            raise AssertionError("unreachable")  # pragma: no cover

    _CLUSTER_CLASS = SafeRedisCluster
    return _CLUSTER_CLASS


def _blocking_sentinel_pool() -> Any:
    """redis-py's Sentinel pool, made to wait for a free connection (as the single-server
    store's pool does) instead of failing with ``MaxConnectionsError``."""
    from redis.asyncio.connection import BlockingConnectionPool
    from redis.asyncio.sentinel import SentinelConnectionPool

    class BlockingSentinelPool(SentinelConnectionPool, BlockingConnectionPool):
        pass

    return BlockingSentinelPool


# ---------------------------------------------------------------------------- scripts


# The scripts' sources by SHA1, to name the command at the line a denial points to.
_SOURCES: dict[str, str] = {}


class Script:
    """A Lua script run by ``EVALSHA``, falling back to ``EVAL`` when the server does not
    know it yet (``NOSCRIPT``) or the ACL user may not run ``EVALSHA``.

    Called like redis-py's ``register_script`` objects: ``await script(keys=[...], args=[...])``.
    """

    def __init__(self, client: Any, source: str, lib: Any) -> None:
        self._client = client
        self._source = source
        self._sha = hashlib.sha1(source.encode("utf-8"), usedforsecurity=False).hexdigest()
        _SOURCES[self._sha] = source
        self._lib = lib
        self._evalsha = True

    async def __call__(self, keys: Sequence[Any] = (), args: Sequence[Any] = ()) -> Any:
        exceptions = self._lib.exceptions
        if self._evalsha:
            try:
                return await self._client.evalsha(self._sha, len(keys), *keys, *args)
            except exceptions.NoScriptError:
                pass  # EVAL loads it: later EVALSHA calls find it
            except exceptions.NoPermissionError:
                self._evalsha = False
        return await self._client.eval(self._source, len(keys), *keys, *args)


# ---------------------------------------------------------------------------- errors

class AclDenied(StorageError):
    """A command the ACL user may not run: what :func:`acl_failure` returns. A
    StorageError to callers; the store tells it apart (a lock it cannot release)."""


_COMMAND = re.compile(r"permissions? to (?:run|access) the '([^']+)' (command|key|channel)")
# Redis 7 names no command when a script's call is denied, only the script and its line.
_IN_SCRIPT = re.compile(
    r"can't run this command or subcommand script: ([0-9a-f]{40}), on @user_script:(\d+)"
)
_CALL = re.compile(r"redis\.call\('(\w+)'")


def denied_in_script(exc: BaseException) -> str | None:
    """The command a store script was refused by the ACL, from Redis's error; else None."""
    match = _IN_SCRIPT.search(str(exc))
    source = _SOURCES.get(match.group(1)) if match else None
    if match is None or source is None:
        return None
    lines = source.split("\n")
    number = int(match.group(2))
    call = _CALL.search(lines[number - 1]) if 0 < number <= len(lines) else None
    return call.group(1).lower() if call else None


def acl_failure(
    url: str, action: str, exc: BaseException, username: str | None, command: str | None = None
) -> AclDenied:
    """The one error for a command the ACL user may not run, naming it and the fix."""
    match = _COMMAND.search(str(exc))
    user = username or "default"
    if command is not None:
        what, fix = f"the command {command.upper()} (in a script)", f"ACL SETUSER {user} +{command}"
    elif match and match.group(2) == "command":
        command = match.group(1).upper()
        fix = f"ACL SETUSER {user} +{match.group(1).lower().replace(' ', '|')}"
        what = f"the command {command}"
    elif match:
        what = f"the {match.group(2)} {match.group(1)!r}"
        fix = f"ACL SETUSER {user} ~<namespace>:* (on a cluster ~{{<namespace>:*)"
    else:
        what, fix = "a command", f"ACL SETUSER {user} {LEAST_PRIVILEGE}"
    return AclDenied(
        f"Redis at {url} refused {what} to the user {user!r} while trying to {action} "
        f"(ACL): allow it with `{fix}`. The store needs {LEAST_PRIVILEGE} on its keys.",
        location=url,
    )
