"""RedisTokenStore beyond one server: a 3-master Redis Cluster, Redis behind Sentinel through
a failover, and an ACL user with the least privileges (or fewer)."""

from __future__ import annotations

import asyncio
import collections
import time
from collections.abc import AsyncIterator, Iterator
from types import SimpleNamespace

import pytest

import aioamztoken as at
from aioamztoken.stores._redis_topology import (
    CLUSTER_PRIVILEGE,
    LEAST_PRIVILEGE,
    _check_cluster_support,
    cluster_lock_key,
    cluster_record_key,
)
from aioamztoken.testing import AmazonEmulator

from .db_servers import RedisClusterServers, SentinelServers
from .redis_server import REDIS_SERVER, SKIP_REASON, RedisServer

redis = pytest.importorskip("redis", reason="redis-py is not installed")

pytestmark = pytest.mark.redis


def token(n: int = 1, *, expires_at: float = 2e9) -> at.Token:
    return at.Token(f"Atza|access-{n}", f"Atzr|refresh-{n}", expires_at, scope="s")


@pytest.fixture
def cluster(redis_cluster: RedisClusterServers) -> RedisClusterServers:
    redis_cluster.flush()
    return redis_cluster


def sync_cluster(cluster: RedisClusterServers) -> object:
    from redis.cluster import ClusterNode, RedisCluster

    return RedisCluster(startup_nodes=[ClusterNode("127.0.0.1", n.port) for n in cluster.nodes])


# ------------------------------------------------------------------------------ cluster


async def test_a_cluster_keeps_each_account_and_its_lock_in_one_slot_spread_over_masters(
    cluster: RedisClusterServers,
) -> None:
    ids = [f"acct-{n}" for n in range(30)] + ["brace}{", "ns:colon", "ü"]
    async with (
        at.open_store(cluster.url + "?namespace=ads") as store,
        at.open_store(cluster.url + "?namespace=ads:x") as nested,
    ):
        for n, account_id in enumerate(ids):
            await store.save(account_id, token(n))
        await nested.save("y", token(99))
        assert await store.accounts() == sorted(ids)  # no account of "ads:x" appears
        assert await nested.accounts() == ["y"]
        async with store.lock("brace}{"):
            client = sync_cluster(cluster)
            try:
                for account_id in ids:
                    record, lock = cluster_record_key("ads", account_id), cluster_lock_key("ads", account_id)
                    assert client.keyslot(record) == client.keyslot(lock)  # type: ignore[attr-defined]
                assert client.exists(cluster_lock_key("ads", "brace}{")) == 1  # type: ignore[attr-defined]
                per_node = collections.Counter(
                    client.keyslot(cluster_record_key("ads", a)) * 3 // 16384 for a in ids  # type: ignore[attr-defined]
                )
            finally:
                client.close()  # type: ignore[attr-defined]
        assert len(per_node) == 3  # the accounts live on all three masters
        assert cluster_record_key("ads", "a") == b"{ads:a}:token"
        assert cluster_record_key("a:b", "c") != cluster_record_key("a", "b:c")


async def test_a_cluster_client_passed_in_is_used_and_left_open(
    cluster: RedisClusterServers,
) -> None:
    from redis.asyncio.cluster import ClusterNode, RedisCluster

    client = RedisCluster(startup_nodes=[ClusterNode("127.0.0.1", cluster.nodes[0].port)])
    async with at.RedisTokenStore(client=client, namespace="passed") as store:
        await store.save("a", token())
        assert await store.load("a") == token()
        async with store.lock("a"):
            pass
        assert store.url.startswith("redis+cluster://127.0.0.1:")
    assert await client.exists(cluster_record_key("passed", "a")) == 1
    await client.aclose()


async def test_1000_concurrent_saves_on_a_cluster_all_land(cluster: RedisClusterServers) -> None:
    async with at.open_store(cluster.url + "?namespace=busy") as store:
        results = await asyncio.gather(
            *(store.save(f"acct-{n}", token(n)) for n in range(1000)), return_exceptions=True
        )
        assert [repr(r)[:300] for r in results if r is not None] == []
        assert len(await store.accounts()) == 1000


async def test_a_cluster_node_opened_as_one_server_or_an_unreachable_cluster_is_a_storage_error(
    cluster: RedisClusterServers,
) -> None:
    refused = []
    for node in cluster.nodes:  # the namespace's hash lives on one of them
        async with at.RedisTokenStore(f"redis://127.0.0.1:{node.port}/0") as store:
            try:
                await store.load("a")
            except at.StorageError as exc:
                refused.append(str(exc))
    assert len(refused) == 2
    assert all("open the store as redis+cluster://" in m for m in refused)
    async with at.open_store("redis+cluster://127.0.0.1:1/") as gone:
        with pytest.raises(at.StorageError, match=r"127\.0\.0\.1:1") as caught:
            await gone.load("a")
        # Not a RedisError: mapped all the same.
        assert "RedisClusterException" in str(caught.value)
        assert not issubclass(redis.exceptions.RedisClusterException, redis.exceptions.RedisError)


def test_cluster_and_sentinel_urls_are_checked() -> None:
    for bad, problem in [
        ("redis+cluster://127.0.0.1:7000/3", "no database"),
        ("redis+cluster://127.0.0.1:x/", "invalid host:port"),
        ("redis+sentinel://127.0.0.1:26379/", "must name the service"),
        ("redis+sentinel://127.0.0.1:26379/svc/x", "must name the service"),
    ]:
        with pytest.raises(ValueError, match=problem):
            at.open_store(bad)
    store = at.open_store("redis+sentinel://:hunter2@127.0.0.1:26379,127.0.0.1:26380/svc/2")
    assert "hunter2" not in repr(store)
    assert store.url == "redis+sentinel://:***@127.0.0.1:26379,127.0.0.1:26380/svc/2"  # type: ignore[attr-defined]
    asyncio.run(store.aclose())  # type: ignore[attr-defined]


def test_a_redis_py_whose_cluster_client_breaks_connections_is_refused() -> None:
    with pytest.raises(ImportError, match=r"redis-py >= 7\.2"):
        _check_cluster_support(SimpleNamespace(__version__="7.1.1"))
    _check_cluster_support(SimpleNamespace(__version__="7.2.0"))


# ------------------------------------------------------------------------------ sentinel


@pytest.fixture
def sentinel(redis_sentinel: SentinelServers) -> SentinelServers:
    redis_sentinel.flush()
    return redis_sentinel


async def test_after_a_sentinel_failover_refreshes_saves_and_locks_keep_working(
    emulator: AmazonEmulator, sentinel: SentinelServers
) -> None:
    async with at.open_store(sentinel.url + "?namespace=failover") as store:
        for account_id in ("a", "b"):
            await store.save(
                account_id,
                at.Token(
                    emulator.issue_access_token(account_id, lifetime=1),
                    emulator.issue_refresh_token(account_id),
                    time.time() - 60,
                ),
            )
        async with at.AsyncTokenManager(
            emulator.client_id, emulator.client_secret, store=store, token_url=emulator.token_url,
            auto_refresh=False,
        ) as mgr:
            first = await mgr.get_access_token("a")
            before = sentinel.master_port()
            await asyncio.to_thread(sentinel.failover)
            assert sentinel.master_port() != before
            second = await asyncio.wait_for(mgr.get_access_token("b"), 30)  # refreshed
            assert second == emulator.current_access_token("b")
            async with store.lock("a"):
                await store.save("c", token(3))
            assert await store.load("c") == token(3)
            assert (await store.load("a")).access_token == first  # type: ignore[union-attr]
        assert emulator.token_requests == 2


# ------------------------------------------------------------------------------ ACL


@pytest.fixture(scope="module")
def acl_server() -> Iterator[RedisServer]:
    if REDIS_SERVER is None:
        pytest.skip(SKIP_REASON)
    server = RedisServer().start()
    yield server
    server.stop()


@pytest.fixture
async def acl_user(acl_server: RedisServer) -> AsyncIterator[object]:
    admin = redis.asyncio.Redis(port=acl_server.port)
    await admin.flushall()

    async def make(name: str, rules: str) -> str:
        await admin.execute_command("ACL", "SETUSER", name, "reset", "on", ">pw-" + name, "~acl:*", *rules.split())
        return f"redis://{name}:pw-{name}@127.0.0.1:{acl_server.port}/0?namespace=acl"

    yield make
    await admin.aclose()


async def test_the_least_privilege_command_set_is_enough(acl_user: object) -> None:
    url = await acl_user("tokens", LEAST_PRIVILEGE)  # type: ignore[operator]
    async with at.open_store(url) as store:
        await store.save("a", token(1))
        await store.save("a", token(2))
        assert await store.load("a") == token(2)
        assert await store.accounts() == ["a"]
        async with store.lock("a"):
            pass
        await store.delete("a")
        assert await store.accounts() == []
    assert "+scan" in CLUSTER_PRIVILEGE


async def test_a_user_without_evalsha_falls_back_to_eval(acl_user: object) -> None:
    url = await acl_user("noevalsha", LEAST_PRIVILEGE.replace("+evalsha", ""))  # type: ignore[operator]
    async with at.open_store(url) as store:
        await store.save("a", token(1))
        async with store.lock("a"):
            await store.save("a", token(2))
        assert await store.load("a") == token(2)


async def test_a_missing_permission_is_one_storage_error_naming_the_command_and_the_fix(
    acl_user: object, caplog: pytest.LogCaptureFixture
) -> None:
    rules = LEAST_PRIVILEGE.replace("+evalsha", "").replace("+eval ", "")
    url = await acl_user("noscripts", rules)  # type: ignore[operator]
    async with at.open_store(url) as store:
        with pytest.raises(at.StorageError) as caught:
            await store.save("a", token())
        message = str(caught.value)
        assert "EVAL" in message
        assert "ACL SETUSER noscripts +eval" in message
        assert "pw-noscripts" not in message
        started = time.monotonic()
        with pytest.raises(at.StorageError, match="release a lock"):  # reported at once
            async with store.lock("a"):
                pass
        assert time.monotonic() - started < 5
        assert "could not release a lock" in caplog.text
    url = await acl_user("nohget", LEAST_PRIVILEGE.replace("+hget", ""))  # type: ignore[operator]
    async with at.open_store(url) as store:
        with pytest.raises(at.StorageError, match="ACL SETUSER nohget \\+hget"):
            await store.load("a")


async def test_the_least_privilege_command_set_is_enough_on_a_cluster(
    cluster: RedisClusterServers,
) -> None:
    for node in cluster.nodes:
        admin = redis.asyncio.Redis(port=node.port)
        await admin.execute_command(
            "ACL", "SETUSER", "ctokens", "reset", "on", ">pw-c", "~{acl:*",
            *LEAST_PRIVILEGE.split(), *CLUSTER_PRIVILEGE.split(),
        )
        await admin.aclose()
    url = cluster.url.replace("redis+cluster://", "redis+cluster://ctokens:pw-c@") + "?namespace=acl"
    async with at.open_store(url) as store:
        for n in range(10):
            await store.save(f"a{n}", token(n))
        assert await store.load("a3") == token(3)
        assert await store.accounts() == [f"a{n}" for n in range(10)]
        async with store.lock("a1"):
            await store.delete("a1")
        assert len(await store.accounts()) == 9


def test_cluster_and_sentinel_urls_take_no_redis_py_options() -> None:
    for url in ("redis+cluster://127.0.0.1:7000/?socket_timeout=5", "redis+sentinel://h:1/s?db=2"):
        with pytest.raises(ValueError, match="client="):
            at.open_store(url)
    store = at.open_store("redis+cluster://127.0.0.1:7000/?namespace=x")
    assert store.namespace == "x"  # type: ignore[attr-defined]
    asyncio.run(store.aclose())  # type: ignore[attr-defined]


async def test_a_command_denied_inside_the_stores_scripts_is_named_too(acl_user: object) -> None:
    url = await acl_user("nohset", LEAST_PRIVILEGE.replace("+hset", ""))  # type: ignore[operator]
    async with at.open_store(url) as store:
        with pytest.raises(at.StorageError) as caught:
            await store.save("a", token())
        assert "ACL SETUSER nohset +hset" in str(caught.value)
