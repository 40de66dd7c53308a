"""The database engines the shared store suite runs against, each on a real server.

Session-scoped servers (started once, on first use, and stopped at the end) and, per
engine, an :class:`Engine`: how to open a store on it by URL, and how to read or spoil
the raw bytes of one account's value, to check what the store refuses and leaves alone.
Imported by conftest.py so that every test module shares the servers.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

import aioamztoken as at

from .db_servers import (
    CLUSTER_SKIP,
    POSTGRES_SKIP,
    VALKEY_SERVER,
    VALKEY_SKIP,
    PostgresServer,
    RedisClusterServers,
    SentinelServers,
)
from .redis_server import RedisServer

#: Engine name -> the marker that makes a skip of it a failure in CI.
ENGINES = {
    "sqlite": None,
    "postgres": "postgres",
    "redis-cluster": "redis",
    "redis-sentinel": "redis",
    "valkey": "valkey",
}


def _start(factory: Any, skip: str) -> Any:
    try:
        server = factory()
    except RuntimeError as exc:
        if str(exc) == skip:
            pytest.skip(skip)
        raise
    try:
        return server.start()
    except BaseException:
        server.stop()
        raise


@pytest.fixture(scope="session")
def postgres_server() -> Iterator[PostgresServer]:
    server = _start(PostgresServer, POSTGRES_SKIP)
    yield server
    server.stop()


@pytest.fixture(scope="session")
def redis_cluster() -> Iterator[RedisClusterServers]:
    cluster = _start(RedisClusterServers, CLUSTER_SKIP)
    yield cluster
    cluster.stop()


@pytest.fixture(scope="session")
def redis_sentinel() -> Iterator[SentinelServers]:
    servers = _start(SentinelServers, CLUSTER_SKIP)
    yield servers
    servers.stop()


@pytest.fixture(scope="session")
def valkey_server() -> Iterator[RedisServer]:
    if VALKEY_SERVER is None:
        pytest.skip(VALKEY_SKIP)
    server = RedisServer(binary=VALKEY_SERVER).start()
    yield server
    server.stop()


@dataclass
class Engine:
    """One engine: ``url(namespace)`` names a store on it; raw access to one value."""

    name: str
    base_url: str
    tmp: Path

    def url(self, namespace: str, **params: str) -> str:
        query = "&".join(f"{k}={v}" for k, v in {"namespace": namespace, **params}.items())
        sep = "&" if "?" in self.base_url else "?"
        return f"{self.base_url}{sep}{query}"

    def open(self, namespace: str = "suite", **params: str) -> Any:
        return at.open_store(self.url(namespace, **params))

    # ------------------------------------------------------------------ raw values

    def _redis(self) -> Any:
        import redis

        if self.name == "redis-cluster":
            from redis.cluster import ClusterNode, RedisCluster

            hosts = self.base_url.split("://")[1].rstrip("/").split(",")
            nodes = [ClusterNode(h.split(":")[0], int(h.split(":")[1])) for h in hosts]
            return RedisCluster(startup_nodes=nodes)
        if self.name == "redis-sentinel":
            from redis.sentinel import Sentinel

            port = int(self.base_url.split("://")[1].split("/")[0].split(":")[1])
            return Sentinel([("127.0.0.1", port)]).master_for(SentinelServers.SERVICE)
        return redis.Redis.from_url(self.base_url)

    def _redis_key(self, namespace: str, account_id: str) -> bytes:
        if self.name == "redis-cluster":
            from aioamztoken.stores._redis_topology import cluster_record_key

            return cluster_record_key(namespace, account_id)
        return f"{namespace}:tokens".encode()

    def get_raw(self, namespace: str, account_id: str) -> bytes | None:
        if self.name == "sqlite":
            with contextlib_closing(sqlite3.connect(self.base_url.removeprefix("sqlite://"))) as db:
                row = db.execute(
                    "SELECT value FROM aioamztoken_tokens WHERE namespace = ? AND account_id = ?",
                    (namespace.encode(), account_id.encode()),
                ).fetchone()
                return None if row is None else bytes(row[0])
        if self.name == "postgres":
            return _pg(self.base_url, "get", namespace, account_id)
        with self._redis() as client:
            value = client.hget(self._redis_key(namespace, account_id), account_id.encode())
            return None if value is None else bytes(value)

    def put_raw(self, namespace: str, account_id: str, value: bytes) -> None:
        if self.name == "sqlite":
            with contextlib_closing(sqlite3.connect(self.base_url.removeprefix("sqlite://"))) as db:
                db.execute(
                    "INSERT OR REPLACE INTO aioamztoken_tokens VALUES (?, ?, ?)",
                    (namespace.encode(), account_id.encode(), value),
                )
                db.commit()
            return
        if self.name == "postgres":
            _pg(self.base_url, "put", namespace, account_id, value)
            return
        with self._redis() as client:
            client.hset(self._redis_key(namespace, account_id), account_id.encode(), value)


def contextlib_closing(db: sqlite3.Connection) -> Any:
    import contextlib

    return contextlib.closing(db)


def _pg(dsn: str, op: str, namespace: str, account_id: str, value: bytes = b"") -> Any:
    import asyncio

    import asyncpg

    async def run() -> Any:
        conn = await asyncpg.connect(dsn)
        try:
            key = (namespace.encode(), account_id.encode())
            if op == "get":
                return await conn.fetchval(
                    "SELECT value FROM aioamztoken_tokens WHERE namespace = $1 AND account_id = $2",
                    *key,
                )
            await conn.execute(
                "INSERT INTO aioamztoken_tokens VALUES ($1, $2, $3) ON CONFLICT "
                "(namespace, account_id) DO UPDATE SET value = excluded.value",
                *key,
                value,
            )
            return None
        finally:
            await conn.close()

    # Called from async tests: run on a loop of its own, in a thread.
    import concurrent.futures

    with concurrent.futures.ThreadPoolExecutor(1) as pool:
        return pool.submit(asyncio.run, run()).result(timeout=30)


@pytest.fixture(
    params=[
        pytest.param(name, marks=() if mark is None else getattr(pytest.mark, mark))
        for name, mark in ENGINES.items()
    ]
)
def engine(request: pytest.FixtureRequest, tmp_path: Path) -> Engine:
    """Each engine in turn, its server started once per session, its data empty."""
    return make_engine(request, request.param, tmp_path)


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def sql_engine(request: pytest.FixtureRequest, tmp_path: Path) -> Engine:
    """SQLite and PostgreSQL, whose locks the OS or the server frees at a holder's death."""
    return make_engine(request, request.param, tmp_path)


def make_engine(request: pytest.FixtureRequest, name: str, tmp_path: Path) -> Engine:
    if name == "sqlite":
        return Engine(name, f"sqlite://{tmp_path / 'tokens.db'}", tmp_path)
    if name == "postgres":
        server = request.getfixturevalue("postgres_server")
        _pg_truncate(server.dsn)
        return Engine(name, server.dsn, tmp_path)
    if name == "redis-cluster":
        cluster = request.getfixturevalue("redis_cluster")
        cluster.flush()
        return Engine(name, cluster.url, tmp_path)
    if name == "redis-sentinel":
        sentinel = request.getfixturevalue("redis_sentinel")
        sentinel.flush()
        return Engine(name, sentinel.url, tmp_path)
    valkey = request.getfixturevalue("valkey_server")
    valkey.flush()
    return Engine(name, valkey.url, tmp_path)


def _pg_truncate(dsn: str) -> None:
    import asyncio
    import concurrent.futures

    import asyncpg

    async def run() -> None:
        conn = await asyncpg.connect(dsn)
        try:
            await conn.execute("DROP TABLE IF EXISTS aioamztoken_tokens")
        finally:
            await conn.close()

    with concurrent.futures.ThreadPoolExecutor(1) as pool:
        pool.submit(asyncio.run, run()).result(timeout=30)


__all__ = [
    "ENGINES",
    "Engine",
    "engine",
    "make_engine",
    "postgres_server",
    "redis_cluster",
    "redis_sentinel",
    "sql_engine",
    "valkey_server",
]
