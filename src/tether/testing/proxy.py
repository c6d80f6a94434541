"""A fault-injecting TCP proxy on 127.0.0.1, for tests that break the network on purpose.

It sits between clients and a server and can pass traffic through, cut every connection (RST),
refuse new ones, add latency, *blackhole* (keep every socket open but forward nothing either way,
as a firewall that silently drops packets does), and lose the reply to one client command after
forwarding it (the server commits; the client never hears: an in-doubt ``COMMIT``).

One thread accepts; one thread per client connection pumps both directions with a selector.
Nothing polls: every thread sleeps in ``select`` until data arrives or a wake-up socket tells
it the proxy's state changed, and only the thread that owns a socket ever closes it (closing a
socket another thread is blocked on invites file-descriptor reuse races).
"""

from __future__ import annotations

import contextlib
import itertools
import logging
import selectors
import socket
import struct
import threading
import time
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from .server import MariaDBServer

__all__ = ["FaultProxy"]

logger = logging.getLogger("tether.testing")

_CHUNK = 65536
_JOIN_TIMEOUT = 5.0  # bound on waiting for threads at close()
_CUT_TIMEOUT = 2.0  # bound on waiting for links to close their sockets at cut_all()


def _rst(sock: socket.socket) -> None:
    """Close with a TCP reset instead of a FIN: what a crashed peer or a middlebox does."""
    with contextlib.suppress(OSError):
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    with contextlib.suppress(OSError):
        sock.close()


class _Waker:
    """A socket pair whose read end wakes a thread sleeping in ``select``."""

    def __init__(self) -> None:
        self.reader, self._writer = socket.socketpair()
        self.reader.setblocking(False)
        self._writer.setblocking(False)

    def wake(self) -> None:
        # A full buffer already means a wake-up is pending; a closed one, nobody listens.
        with contextlib.suppress(OSError):
            self._writer.send(b"\0")

    def drain(self) -> None:
        with contextlib.suppress(OSError):
            while self.reader.recv(4096):
                pass

    def close(self) -> None:
        self.reader.close()
        self._writer.close()


class _Link:
    """One client connection and its upstream connection, pumped by one thread."""

    def __init__(self, proxy: FaultProxy, client: socket.socket, number: int) -> None:
        self.proxy = proxy
        self.client = client
        self.upstream: socket.socket | None = None
        self._cut = threading.Event()  # close both sides with RST, now
        self._waker = _Waker()
        self._drop_reply = False
        self._eof_during_blackhole = False
        self.done = threading.Event()
        self.thread = threading.Thread(
            target=self._run, name=f"tether-proxy-{proxy.port}-link-{number}", daemon=True
        )

    def cut(self) -> None:
        self._cut.set()
        self._waker.wake()

    def poke(self) -> None:
        """The proxy's mode changed: look again."""
        self._waker.wake()

    # -- the link's own thread

    def _run(self) -> None:
        reset = True
        try:
            reset = self._serve()
        except Exception:
            logger.debug("proxy link failed", exc_info=True)
        finally:
            for sock in (self.client, self.upstream):
                if sock is not None:
                    if reset:
                        _rst(sock)
                    else:
                        with contextlib.suppress(OSError):
                            sock.close()
            self._waker.close()
            self.proxy._forget(self)
            self.done.set()

    def _serve(self) -> bool:
        """Pump until the link ends; True to end it with resets, False with FINs."""
        proxy = self.proxy
        try:
            upstream = socket.create_connection(proxy.target, timeout=proxy.connect_timeout)
        except OSError as exc:
            logger.debug("proxy: upstream %s:%d unreachable: %s", *proxy.target, exc)
            return True  # the server is down: so is the path through us
        self.upstream = upstream
        for sock in (self.client, upstream):
            sock.setblocking(False)
            with contextlib.suppress(OSError):
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        peer = {self.client: upstream, upstream: self.client}
        with selectors.DefaultSelector() as sel:
            sel.register(self._waker.reader, selectors.EVENT_READ)
            sel.register(self.client, selectors.EVENT_READ)
            sel.register(upstream, selectors.EVENT_READ)
            while True:
                if self._cut.is_set():
                    return True
                if self._eof_during_blackhole and not proxy._blackhole:
                    return False  # the blackhole lifted: deliver the close it held back
                # No timeout: a wake-up comes with every state change that matters.
                for key, _ in sel.select():
                    src = key.fileobj
                    if src is self._waker.reader:
                        self._waker.drain()
                        continue
                    assert isinstance(src, socket.socket)
                    reset = False
                    try:
                        data = src.recv(_CHUNK)
                    except BlockingIOError:
                        continue
                    except OSError:
                        data, reset = b"", True
                    if not data:
                        if proxy._blackhole:
                            # A firewall dropping packets drops FINs and resets too: the
                            # other side hears nothing and keeps waiting.
                            sel.unregister(src)
                            self._eof_during_blackhole = True
                            continue
                        return reset  # pass a reset on as a reset, a close as a close
                    if not self._forward(src, peer[src], data):
                        return True

    def _forward(self, src: socket.socket, dst: socket.socket, data: bytes) -> bool:
        """Forward one chunk (or drop it, as the mode says); False ends the link with RST."""
        proxy = self.proxy
        if proxy._blackhole:
            return True  # silently dropped
        if src is self.client:
            if proxy._take_lose_match(data):
                self._drop_reply = True
        elif self._drop_reply:
            # The server answered the command, so it ran. The client never hears of it.
            logger.info("proxy %d: dropped a reply and cut its connection", proxy.port)
            return False
        delay = proxy._delay
        if delay > 0:
            if self._cut.wait(delay):  # interruptible sleep
                return False
            if proxy.blackholed:
                return True  # went dark while the data was "in flight"
        return self._send_all(dst, data)

    def _send_all(self, dst: socket.socket, data: bytes) -> bool:
        view = memoryview(data)
        while view:
            try:
                sent = dst.send(view)
            except BlockingIOError:
                # The receiver is not reading: wait for room, or for a cut.
                with selectors.DefaultSelector() as sel:
                    sel.register(dst, selectors.EVENT_WRITE)
                    sel.register(self._waker.reader, selectors.EVENT_READ)
                    for key, _ in sel.select():
                        if key.fileobj is self._waker.reader:
                            self._waker.drain()
                if self._cut.is_set():
                    return False
                continue
            except OSError:
                return False
            view = view[sent:]
        return True


class FaultProxy:
    """A TCP proxy on 127.0.0.1 (a free port) in front of ``target_host:target_port``.

    Faults are switched on and off from any thread while traffic flows::

        with FaultProxy(server.host, server.port) as proxy:
            conn = connect_raw("pymysql", proxy, server.user, server.password)
            proxy.blackhole(True)   # reads through the proxy now hang until their timeout
    """

    host = "127.0.0.1"

    def __init__(
        self,
        target_host: str,
        target_port: int,
        *,
        connect_timeout: float = 5.0,
        server: MariaDBServer | None = None,
    ) -> None:
        self.target = (target_host, target_port)
        self.connect_timeout = connect_timeout
        #: The server behind the proxy, when known: lends its credentials to helpers.
        self.server = server
        self._lock = threading.Lock()
        self._links: set[_Link] = set()
        self._numbers = itertools.count(1)
        self._accepted = 0
        self._listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self._listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self._listener.bind((self.host, 0))
        self._listener.listen(128)
        self._listener.setblocking(False)
        self.port: int = self._listener.getsockname()[1]
        self._waker = _Waker()
        self._stopping = False
        self._blackhole = False
        self._refuse = False
        self._delay = 0.0
        self._lose_match: bytes | None = None
        self._acceptor: threading.Thread | None = None

    @classmethod
    def in_front_of(cls, server: MariaDBServer, **kwargs: Any) -> FaultProxy:
        """A proxy (not yet started) for ``server``, which it remembers."""
        return cls(server.host, server.port, server=server, **kwargs)

    @property
    def address(self) -> tuple[str, int]:
        return (self.host, self.port)

    def dsn_for(self, server: MariaDBServer | None = None, **kwargs: Any) -> str:
        """``server``'s DSN (default: the server it was made for) pointing at this proxy."""
        server = server or self.server
        if server is None:
            raise ValueError("dsn_for needs the server behind the proxy")
        return server.dsn(host=self.host, port=self.port, **kwargs)

    def __repr__(self) -> str:
        return (
            f"<FaultProxy {self.host}:{self.port} -> {self.target[0]}:{self.target[1]}"
            f" links={self.active_connections} blackhole={self._blackhole}"
            f" refuse={self._refuse} delay={self._delay}>"
        )

    # -- lifecycle

    def start(self) -> FaultProxy:
        if self._stopping:
            raise RuntimeError("a closed FaultProxy cannot be started again")
        if self._acceptor is None:
            self._acceptor = threading.Thread(
                target=self._accept_loop, name=f"tether-proxy-{self.port}-accept", daemon=True
            )
            self._acceptor.start()
            logger.debug("proxy %d -> %s:%d started", self.port, *self.target)
        return self

    def close(self) -> None:
        """Stop accepting, reset every connection, and join every thread (bounded)."""
        if self._stopping:
            return
        self._stopping = True
        self._waker.wake()
        deadline = time.monotonic() + _JOIN_TIMEOUT
        if self._acceptor is not None:
            self._acceptor.join(_JOIN_TIMEOUT)
            if self._acceptor.is_alive():
                logger.warning("proxy %d: accept thread did not stop", self.port)
        else:
            self._close_listener()
        self.cut_all()
        with self._lock:
            links = list(self._links)
        for link in links:
            link.thread.join(max(0.0, deadline - time.monotonic()))
        self._waker.close()
        logger.debug("proxy %d closed", self.port)

    def __enter__(self) -> FaultProxy:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- faults

    def pass_through(self) -> None:
        """Back to normal: forward everything, accept new connections, no delay, no pending
        lost reply."""
        with self._lock:
            self._blackhole = False
            self._refuse = False
            self._delay = 0.0
            self._lose_match = None
        self._poke_all()

    def cut_all(self) -> None:
        """Reset every current connection, both sides. Returns once their sockets are closed
        (or after a short bound)."""
        with self._lock:
            links = list(self._links)
        for link in links:
            link.cut()
        deadline = time.monotonic() + _CUT_TIMEOUT
        for link in links:
            link.done.wait(max(0.0, deadline - time.monotonic()))

    def refuse_new(self, refuse: bool = True) -> None:
        """New connections are accepted and reset at once (existing ones are untouched)."""
        self._refuse = refuse

    def delay(self, seconds: float) -> None:
        """Hold every forwarded chunk ``seconds`` before sending it on, both ways (so a
        query's round trip grows by about twice that). 0 turns it off."""
        self._delay = max(0.0, float(seconds))

    def blackhole(self, on: bool = True) -> None:
        """Forward nothing either way, FINs included, while keeping every socket open and
        still accepting new connections (which then hear nothing, not even the greeting): a
        firewall silently dropping packets. Data arriving meanwhile is discarded, so a
        connection that lived through a blackhole is usually unusable afterwards."""
        self._blackhole = on
        if not on:
            self._poke_all()

    def lose_next_reply(self, match: bytes = b"") -> None:
        """Forward the next client chunk (the next one containing ``match``, if given) to the
        server, then drop the server's reply and reset that client's connection."""
        with self._lock:
            self._lose_match = match

    @property
    def blackholed(self) -> bool:
        return self._blackhole

    @property
    def active_connections(self) -> int:
        """Client connections currently open through the proxy."""
        with self._lock:
            return len(self._links)

    @property
    def accepted(self) -> int:
        """Client connections accepted since the start (refused ones included)."""
        return self._accepted

    # -- internals

    def _take_lose_match(self, data: bytes) -> bool:
        if self._lose_match is None:
            return False
        with self._lock:
            if self._lose_match is None or self._lose_match not in data:
                return False
            self._lose_match = None
            return True

    def _poke_all(self) -> None:
        with self._lock:
            links = list(self._links)
        for link in links:
            link.poke()

    def _close_listener(self) -> None:
        with contextlib.suppress(OSError):
            self._listener.close()

    def _accept_loop(self) -> None:
        try:
            with selectors.DefaultSelector() as sel:
                sel.register(self._listener, selectors.EVENT_READ)
                sel.register(self._waker.reader, selectors.EVENT_READ)
                while not self._stopping:
                    # No timeout: close() wakes us.
                    for key, _ in sel.select():
                        if key.fileobj is self._waker.reader:
                            self._waker.drain()
                        else:
                            self._accept_one()
        except Exception:
            logger.exception("proxy %d: accept loop failed", self.port)
        finally:
            self._close_listener()

    def _accept_one(self) -> None:
        try:
            client, _ = self._listener.accept()
        except (BlockingIOError, InterruptedError):
            return
        except OSError as exc:
            logger.debug("proxy %d: accept failed: %s", self.port, exc)
            return
        self._accepted += 1
        if self._refuse or self._stopping:
            _rst(client)
            return
        client.setblocking(True)
        link = _Link(self, client, next(self._numbers))
        with self._lock:
            self._links.add(link)
        link.thread.start()

    def _forget(self, link: _Link) -> None:
        with self._lock:
            self._links.discard(link)
