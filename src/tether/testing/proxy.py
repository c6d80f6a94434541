"""A fault-injecting TCP proxy on 127.0.0.1, for tests that break the network on purpose.

It sits between clients and a server and can pass traffic through, cut every connection (RST),
refuse new ones, add latency, *blackhole* (keep every socket open but forward nothing either way,
as a firewall that silently drops packets does), and lose the reply to one client command after
forwarding it (the server commits; the client never hears: an in-doubt ``COMMIT``).
"""

from __future__ import annotations

import contextlib
import logging
import selectors
import socket
import struct
import threading
import time

__all__ = ["FaultProxy"]

logger = logging.getLogger("tether.testing")

_CHUNK = 65536
_TICK = 0.05  # how often idle pump threads look at the proxy's mode


def _rst(sock: socket.socket) -> None:
    """Close with a TCP reset instead of a FIN: what a crashed peer or a middlebox does."""
    with contextlib.suppress(OSError):
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    with contextlib.suppress(OSError):
        sock.close()


class _Link:
    """One client connection and its upstream connection, pumped by one thread."""

    def __init__(self, proxy: FaultProxy, client: socket.socket, upstream: socket.socket) -> None:
        self.proxy = proxy
        self.client = client
        self.upstream = upstream
        self.closed = False
        self.drop_reply = False
        self.thread = threading.Thread(target=self._pump, name="tether-proxy-link", daemon=True)

    def cut(self) -> None:
        if not self.closed:
            self.closed = True
            _rst(self.client)
            _rst(self.upstream)

    def _pump(self) -> None:
        sel = selectors.DefaultSelector()
        try:
            sel.register(self.client, selectors.EVENT_READ, self.upstream)
            sel.register(self.upstream, selectors.EVENT_READ, self.client)
            while not self.closed and not self.proxy._stopping:
                for key, _ in sel.select(_TICK):
                    src: socket.socket = key.fileobj  # type: ignore[assignment]
                    dst: socket.socket = key.data
                    try:
                        data = src.recv(_CHUNK)
                    except OSError:
                        data = b""
                    if not data:
                        if self.proxy._blackhole:
                            # A firewall dropping packets drops the FIN too: the other side
                            # hears nothing, and keeps waiting.
                            sel.unregister(src)
                            continue
                        self.cut()
                        return
                    self._forward(src, dst, data)
        except (OSError, ValueError):
            pass  # a socket was cut under us
        finally:
            sel.close()
            self.cut()
            self.proxy._forget(self)

    def _forward(self, src: socket.socket, dst: socket.socket, data: bytes) -> None:
        proxy = self.proxy
        if proxy._blackhole:
            return  # silently dropped
        from_client = src is self.client
        if from_client and proxy._lose_match is not None and proxy._lose_match in data:
            with proxy._lock:
                armed = proxy._lose_match is not None and proxy._lose_match in data
                if armed:
                    proxy._lose_match = None
            if armed:
                self.drop_reply = True
        elif not from_client and self.drop_reply:
            # The server answered the command: it ran. The client never hears of it.
            logger.info("proxy: dropped a reply and cut the connection")
            self.cut()
            return
        if proxy._delay:
            time.sleep(proxy._delay)
        try:
            dst.sendall(data)
        except OSError:
            self.cut()


class FaultProxy:
    """A TCP proxy on 127.0.0.1 (a free port) in front of ``target_host:target_port``."""

    host = "127.0.0.1"

    def __init__(self, target_host: str, target_port: int) -> None:
        self.target = (target_host, target_port)
        self._lock = threading.Lock()
        self._links: set[_Link] = set()
        self._listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self._listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self._listener.bind((self.host, 0))
        self._listener.listen(128)
        self._listener.settimeout(_TICK)
        self.port: int = self._listener.getsockname()[1]
        self._stopping = False
        self._blackhole = False
        self._refuse = False
        self._delay = 0.0
        self._lose_match: bytes | None = None
        self._acceptor: threading.Thread | None = None

    @property
    def address(self) -> tuple[str, int]:
        return (self.host, self.port)

    def __repr__(self) -> str:
        return (
            f"<FaultProxy 127.0.0.1:{self.port} -> {self.target[0]}:{self.target[1]}"
            f" links={len(self._links)} blackhole={self._blackhole} refuse={self._refuse}>"
        )

    # -- lifecycle

    def start(self) -> FaultProxy:
        if self._acceptor is None:
            self._acceptor = threading.Thread(
                target=self._accept_loop, name="tether-proxy-accept", daemon=True
            )
            self._acceptor.start()
        return self

    def close(self) -> None:
        self._stopping = True
        self.cut_all()
        if self._acceptor is not None:
            self._acceptor.join(5)
        with contextlib.suppress(OSError):
            self._listener.close()
        with self._lock:
            links = list(self._links)
        for link in links:
            link.thread.join(2)

    def __enter__(self) -> FaultProxy:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- faults

    def pass_through(self) -> None:
        """Back to normal: forward everything, accept new connections, no delay."""
        self._blackhole = False
        self._refuse = False
        self._delay = 0.0

    def cut_all(self) -> None:
        """Reset every current connection, both sides."""
        with self._lock:
            links = list(self._links)
        for link in links:
            link.cut()

    def refuse_new(self, refuse: bool = True) -> None:
        """New connections are reset as soon as they arrive."""
        self._refuse = refuse

    def delay(self, seconds: float) -> None:
        """Add ``seconds`` of latency to every forwarded chunk."""
        self._delay = max(0.0, seconds)

    def blackhole(self, on: bool = True) -> None:
        """Forward nothing either way while keeping every socket open (and accepting new
        ones): a firewall silently dropping packets. Data arriving meanwhile is lost."""
        self._blackhole = on

    def lose_next_reply(self, match: bytes = b"") -> None:
        """Forward the next client command (containing ``match``, if given) to the server,
        then drop the server's reply and cut that client's connection."""
        with self._lock:
            self._lose_match = match

    @property
    def active_connections(self) -> int:
        with self._lock:
            return len(self._links)

    # -- internals

    def _accept_loop(self) -> None:
        while not self._stopping:
            try:
                client, _ = self._listener.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            if self._refuse:
                _rst(client)
                continue
            try:
                upstream = socket.create_connection(self.target, timeout=5)
            except OSError:
                _rst(client)  # the server is down: so is the path through us
                continue
            client.setblocking(True)
            upstream.settimeout(None)
            client.settimeout(None)
            for sock in (client, upstream):
                with contextlib.suppress(OSError):
                    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            link = _Link(self, client, upstream)
            with self._lock:
                self._links.add(link)
            link.thread.start()

    def _forget(self, link: _Link) -> None:
        with self._lock:
            self._links.discard(link)
