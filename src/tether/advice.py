"""What a server's limits mean for an application's pools: pure arithmetic, no I/O.

:func:`advise` takes the limits (:class:`Limits`, read by :mod:`tether.inspect`) and the shape
of an application (processes x threads) and gives a pool size per process that keeps the whole
fleet under the binding cap, and lifetimes under the server's ``wait_timeout``, by the same
rule the pool applies itself (:func:`tether.config.lifetimes_under`).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

from .config import DEFAULTS, lifetimes_under

__all__ = ["Advice", "Limits", "advise", "lifetimes", "reserve_for"]


@dataclass(frozen=True)
class Limits:
    """What :func:`advise` needs to know about a server. ``None``: not visible.

    ``account_max_user_connections`` and ``max_user_connections`` use the server's convention:
    0 means no limit. ``own_sessions`` are the sessions of the inspecting account (other than
    the inspection's own), assumed to belong to the application being planned.
    """

    max_connections: int | None = None
    max_user_connections: int | None = None
    account_max_user_connections: int | None = None
    wait_timeout: int | None = None
    threads_connected: int | None = None
    max_used_connections: int | None = None
    own_sessions: int = 0
    account: str = "this account"


@dataclass
class Advice:
    processes: int
    threads: int
    cap: int | None  # the binding connection limit for this application
    cap_source: str  # which limit that is
    reserve: int  # kept free under the cap for admins, tools, deploys
    others: int  # connections other clients hold under max_connections (when that binds)
    budget: int | None  # connections the whole application may hold
    pool_size: int  # max_size per process
    fits: bool  # at least one connection per process fits under the cap
    max_lifetime: float | None
    idle_timeout: float | None
    keepalive: float | None
    timeout: float
    driver: str = "pymysql"
    warnings: list[str] = field(default_factory=list)
    reasons: list[str] = field(default_factory=list)  # the arithmetic, in words

    @property
    def fleet_size(self) -> int:
        return self.pool_size * self.processes

    @property
    def threads_wait(self) -> bool:
        return self.pool_size < self.threads

    def pool_line(self) -> str:
        parts = [
            "dsn",
            f'driver="{self.driver}"',
            f"max_size={self.pool_size}",
            f"timeout={self.timeout:g}",
        ]
        for name in ("max_lifetime", "idle_timeout", "keepalive"):
            value = getattr(self, name)
            if value is not None:
                parts.append(f"{name}={value:g}")
        return f"tether.Pool({', '.join(parts)})"

    def as_dict(self) -> dict[str, Any]:
        return {
            "processes": self.processes,
            "threads": self.threads,
            "cap": self.cap,
            "cap_source": self.cap_source,
            "reserve": self.reserve,
            "others": self.others,
            "budget": self.budget,
            "pool_size": self.pool_size,
            "fleet_size": self.fleet_size,
            "fits": self.fits,
            "threads_wait": self.threads_wait,
            "max_lifetime": self.max_lifetime,
            "idle_timeout": self.idle_timeout,
            "keepalive": self.keepalive,
            "timeout": self.timeout,
            "pool": self.pool_line(),
            "warnings": list(self.warnings),
            "reasons": list(self.reasons),
        }


# --------------------------------------------------------------------------- advice


def reserve_for(cap: int) -> int:
    """Connections kept free under a cap for an admin, a migration, a deploy's overlap: about
    10%, at least 2."""
    return max(2, math.ceil(cap * 0.1))


def lifetimes(wait_timeout: int | None) -> tuple[float | None, float | None, float | None]:
    """``(max_lifetime, idle_timeout, keepalive)`` for a server with this ``wait_timeout``: the
    pool's defaults lowered by the rule the pool applies itself
    (:func:`tether.config.lifetimes_under`), in whole seconds where that only lowers them."""
    if wait_timeout is None or wait_timeout <= 0:
        return None, None, None
    found = lifetimes_under(DEFAULTS, wait_timeout)

    def whole(value: float | None) -> float | None:
        return float(math.floor(value)) if value is not None and value >= 2 else value

    return whole(found.max_lifetime), whole(found.idle_timeout), whole(found.keepalive)


def _positive(value: int | None) -> int | None:
    return value if value is not None and value > 0 else None


def advise(
    limits: Limits,
    processes: int = 1,
    threads: int = 16,
    *,
    request_timeout: float = 30.0,
    driver: str = "pymysql",
) -> Advice:
    """Pool settings for an application of ``processes`` processes with ``threads`` threads
    each, every process holding one pool.

    The binding cap is the lower of the per-user cap (the account's own
    ``MAX_USER_CONNECTIONS`` if set, else the global ``max_user_connections`` if set) and
    ``max_connections``. From it go a reserve (:func:`reserve_for`) and, for
    ``max_connections``, the connections other clients hold now; what is left is shared by the
    processes, and no process gets more than ``threads``: a thread holds one connection at a
    time. ``timeout`` is a third of ``request_timeout``, so a thread waiting for a connection
    gives up (and the request fails cleanly) well before the request itself would be killed.
    """
    if processes < 1 or threads < 1:
        raise ValueError("processes and threads must be at least 1")
    if request_timeout <= 0:
        raise ValueError("request_timeout must be positive")
    warnings: list[str] = []
    reasons: list[str] = []

    # Each candidate cap: (budget for this app, cap, where it comes from, reserve, others).
    candidates: list[tuple[int, int, str, int, int]] = []
    account_cap = _positive(limits.account_max_user_connections)
    global_user_cap = _positive(limits.max_user_connections)
    if account_cap is not None:
        user_cap, user_source = account_cap, f"MAX_USER_CONNECTIONS of {limits.account}"
    elif global_user_cap is not None:
        user_cap, user_source = global_user_cap, "max_user_connections (global)"
    else:
        user_cap = None
    if user_cap is not None:
        # Only this account's sessions count against it; they are taken to be the app's own.
        reserve = reserve_for(user_cap)
        candidates.append((user_cap - reserve, user_cap, user_source, reserve, 0))
        if limits.own_sessions + 1 >= user_cap:
            warnings.append(
                f"{limits.account} holds {limits.own_sessions + 1} of its {user_cap}"
                " connections right now (this inspection's included): new connections are"
                " about to be refused (error 1226)."
            )
    server_cap = _positive(limits.max_connections)
    if server_cap is not None:
        others = 0
        if limits.threads_connected is not None:
            # Everyone else's sessions stay; this account's (the app's) and this inspection's
            # own are what the planned pools replace.
            others = max(0, limits.threads_connected - 1 - limits.own_sessions)
        else:
            reasons.append("Threads_connected is not visible: other clients' use is not counted")
        used = limits.max_used_connections
        if used is not None and used >= 0.9 * server_cap:
            warnings.append(
                f"Max_used_connections is {used} of max_connections {server_cap}: the server"
                " has been at or near its cap since it started (or since FLUSH STATUS)."
            )
        reserve = reserve_for(server_cap)
        candidates.append(
            (server_cap - reserve - others, server_cap, "max_connections", reserve, others)
        )

    cap: int | None = None
    budget: int | None = None
    reserve = others = 0
    source = "none visible"
    fits = True
    if not candidates:
        size = threads
        warnings.append(
            "no connection cap is visible: the size below only follows the threads; check"
            " max_connections and max_user_connections with the server's administrator."
        )
    else:
        budget, cap, source, reserve, others = min(candidates)
        line = f"{source} = {cap}, minus {reserve} kept free (10%, at least 2)"
        if others:
            line += f", minus {others} held by other clients now"
        reasons.append(f"{line}: {max(budget, 0)} for this application")
        if limits.own_sessions:
            reasons.append(
                f"the {limits.own_sessions} sessions {limits.account} holds now are taken to be"
                " this application's: its new pools replace them"
            )
        if budget < processes:
            fits = False
            size = 1
            warnings.append(
                f"the plan cannot fit: {processes} processes need at least {processes}"
                f" connections (one each), but {source} ({cap}) leaves {max(budget, 0)} for"
                " this application. Connects past the cap fail (error 1226 or 1040) and pools"
                " wait for them to clear. Run fewer processes, raise the cap, or move"
                " other clients off this server."
            )
        else:
            size = min(threads, budget // processes)
            reasons.append(
                f"{budget} // {processes} processes = {budget // processes} per process"
                + (f", capped at {threads} threads" if budget // processes > threads else "")
            )
        if fits and size < threads:
            warnings.append(
                f"{size} connections per process for {threads} threads: up to"
                f" {threads - size} threads per process wait for a connection at peak. Fine"
                " when connections are held per query or for short requests (the pool's"
                " timeout bounds the wait); otherwise run fewer threads or raise the cap."
            )

    max_lifetime, idle_timeout, keepalive = lifetimes(limits.wait_timeout)
    if limits.wait_timeout is None:
        reasons.append("wait_timeout is not visible: the pool reads it on its first connect")
    else:
        reasons.append(
            f"wait_timeout = {limits.wait_timeout}s: connections are retired before the"
            " server drops them, and idle ones pinged"
        )
        if limits.wait_timeout <= 30:
            warnings.append(
                f"wait_timeout is only {limits.wait_timeout}s: idle connections are dropped"
                " quickly; the pool retires them earlier and pings idle ones, but a larger"
                " wait_timeout for this account saves reconnects."
            )
    timeout = max(1.0, min(30.0, float(round(request_timeout / 3))))
    return Advice(
        processes=processes,
        threads=threads,
        cap=cap,
        cap_source=source,
        reserve=reserve,
        others=others,
        budget=budget,
        pool_size=size,
        fits=fits,
        max_lifetime=max_lifetime,
        idle_timeout=idle_timeout,
        keepalive=keepalive,
        timeout=timeout,
        driver=driver,
        warnings=warnings,
        reasons=reasons,
    )
