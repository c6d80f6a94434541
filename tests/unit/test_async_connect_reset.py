"""A connect whose peer resets the connection right after accepting it (a proxy whose server is
down, a server going away mid-restart) is a lost connection, whatever the driver and the event
loop make of it. Under uvloop, both asyncio drivers' socket set-up (keepalive, no-delay) then
finds the transport already closed and raises ``RuntimeError``: the adapter must turn that
into the driver's error, which the pool waits out, instead of letting it reach the caller.

The server here accepts and resets a moment later; the loop's ``create_connection`` waits until the
reset has closed the transport before handing it to the driver, which pins the race that real
traffic only hits now and then."""

from __future__ import annotations

import asyncio
import contextlib
import socket
import struct
import threading
import time
from collections.abc import Iterator
from typing import Any

import pytest

import tether
from tether.aio.drivers import get_async_driver
from tether.classify import ErrorKind, classify
from tether.dsn import parse_dsn

uvloop = pytest.importorskip("uvloop")


@pytest.fixture(params=("asyncmy", "aiomysql"))
def adriver(request: pytest.FixtureRequest) -> str:
    name: str = request.param
    pytest.importorskip(name)
    return name


@contextlib.contextmanager
def resetting_server() -> Iterator[int]:
    """A loopback port whose every accepted connection is reset (SO_LINGER 0) a moment after
    it was accepted: after the client's connect completed, before the server says a word."""
    listener = socket.create_server(("127.0.0.1", 0))
    listener.settimeout(0.2)
    stop = threading.Event()

    def serve() -> None:
        while not stop.is_set():
            try:
                conn, _ = listener.accept()
            except (TimeoutError, OSError):
                continue
            time.sleep(0.02)
            conn.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            conn.close()

    thread = threading.Thread(target=serve, name="resetting-server", daemon=True)
    thread.start()
    try:
        yield int(listener.getsockname()[1])
    finally:
        stop.set()
        thread.join(5)
        listener.close()


class ResetSeenLoop(uvloop.Loop):  # type: ignore[misc, name-defined]
    """uvloop, whose new connections are handed over once the peer's reset has closed them."""

    async def create_connection(self, *args: Any, **kwargs: Any) -> Any:
        transport, protocol = await super().create_connection(*args, **kwargs)
        deadline = time.monotonic() + 5
        while not transport.is_closing() and time.monotonic() < deadline:
            await asyncio.sleep(0.001)
        return transport, protocol


def run_on_reset_seen_loop(coro: Any) -> Any:
    with asyncio.Runner(loop_factory=ResetSeenLoop) as runner:
        return runner.run(coro)


def test_a_connection_reset_during_connect_is_the_drivers_disconnect_error(adriver: str) -> None:
    driver = get_async_driver(adriver)

    async def connect(port: int) -> BaseException:
        dsn = parse_dsn(f"mysql://app:pw@127.0.0.1:{port}/app")
        with pytest.raises(BaseException) as info:
            await driver.connect(dsn, connect_timeout=5, autocommit=True, connect_args={})
        return info.value

    with resetting_server() as port:
        error = run_on_reset_seen_loop(connect(port))
    assert isinstance(error, driver.OperationalError), repr(error)
    assert classify(error, driver) is ErrorKind.DISCONNECT


def test_a_pool_waits_out_connects_that_are_reset(adriver: str) -> None:
    """The check-out backs off and retries until its deadline, then says why: a pool
    timeout naming the lost connection, never the loop's RuntimeError."""

    async def check_out(port: int) -> tether.PoolStats:
        pool = tether.AsyncPool(
            f"mysql://app:pw@127.0.0.1:{port}/app", driver=adriver, timeout=1.0, watchdog=None
        )
        async with pool:
            with pytest.raises(tether.PoolTimeout, match="Lost connection"):
                await pool.connection()
            return pool.stats()

    with resetting_server() as port:
        stats = run_on_reset_seen_loop(check_out(port))
    assert stats.counters.connect_errors >= 2  # retried after backing off
    assert stats.size == 0
