"""What tether does to a connection's socket, whatever the driver: shut it down from another
thread (the watchdog, a ping's hard timeout), blank it in a forked child, and tune TCP so a
silently dropped flow fails in seconds."""

from __future__ import annotations

import contextlib
import os
import select
import socket
import threading

__all__ = ["TimedBreak", "break_socket", "neuter_fd", "readable", "tune_socket"]

# Socket tuning for silently dropped flows: keepalive probes after 30 s idle, every 5 s, 3
# misses; written data unacknowledged for 15 s fails the socket.
KEEPALIVE_IDLE, KEEPALIVE_INTERVAL, KEEPALIVE_COUNT, USER_TIMEOUT_MS = 30, 5, 3, 15_000

# What "readable" means for an idle connection's socket: the server closed it, or sent an
# error (timeout, KILL, shutdown) before closing. An idle session has nothing else to say.
_POLL_BAD = select.POLLIN | select.POLLPRI | select.POLLERR | select.POLLHUP | select.POLLNVAL


def poller(fd: int) -> select.poll:
    """A poll object watching ``fd`` for :func:`readable` (made once per connection)."""
    watch = select.poll()
    watch.register(fd, _POLL_BAD)
    return watch


def readable(watch: select.poll) -> bool:
    """Whether an idle connection's socket has something to read: it is dead."""
    return bool(watch.poll(0))


def break_socket(fd: int) -> None:
    """Shut a connected socket down both ways so a thread blocked reading it returns at once.

    Works on a duplicate of ``fd``: ``shutdown`` acts on the socket shared by both descriptors,
    while closing the duplicate leaves the driver's own descriptor for it to close.
    """
    with contextlib.suppress(OSError):
        dup = socket.socket(fileno=os.dup(fd))
        try:
            dup.shutdown(socket.SHUT_RDWR)
        finally:
            dup.close()


def neuter_fd(fd: int) -> None:
    """Point ``fd`` at a fresh unconnected socket, so nothing written to it reaches the server.

    Used in a forked child: the inherited descriptor shares the parent's TCP connection, and a
    ``QUIT`` (or any byte) sent from the child would break the parent's session.
    """
    with contextlib.suppress(OSError):
        blank = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        try:
            os.dup2(blank.fileno(), fd)
        finally:
            blank.close()


def tune_socket(fd: int) -> None:
    """TCP keepalive with short timings and ``TCP_USER_TIMEOUT``.

    Keepalive finds a peer that vanished while the connection is idle; ``TCP_USER_TIMEOUT``
    bounds how long written data may stay unacknowledged (a silently dropped flow), which would
    otherwise take the kernel's retransmission timeout: about 15 minutes.
    """
    try:
        sock = socket.socket(fileno=os.dup(fd))
    except OSError:
        return
    try:
        if sock.family not in (socket.AF_INET, socket.AF_INET6):
            return
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE, 1)
        for name, value in (
            ("TCP_KEEPIDLE", KEEPALIVE_IDLE),
            ("TCP_KEEPINTVL", KEEPALIVE_INTERVAL),
            ("TCP_KEEPCNT", KEEPALIVE_COUNT),
            ("TCP_USER_TIMEOUT", USER_TIMEOUT_MS),
        ):
            option = getattr(socket, name, None)
            if option is not None:
                with contextlib.suppress(OSError):
                    sock.setsockopt(socket.IPPROTO_TCP, option, value)
    finally:
        sock.close()


class TimedBreak:
    """Breaks a socket if a call has not finished by a deadline (a hard timeout for drivers
    that have no per-call timeout). The lock makes sure a late timer never shuts down a
    descriptor that was since closed and reused."""

    __slots__ = ("_done", "_fd", "_lock", "_timer", "fired")

    def __init__(self, fd: int, timeout: float) -> None:
        self._fd = fd
        self._lock = threading.Lock()
        self._done = False
        self.fired = False
        self._timer = threading.Timer(timeout, self._fire)
        self._timer.daemon = True
        self._timer.name = "tether-timeout"

    def __enter__(self) -> TimedBreak:
        self._timer.start()
        return self

    def __exit__(self, *exc: object) -> None:
        with self._lock:
            self._done = True
        self._timer.cancel()

    def _fire(self) -> None:
        with self._lock:
            if not self._done:
                self.fired = True
                break_socket(self._fd)
