"""A pool's options: one validated, frozen config with one set of defaults.

Every pool flavour takes the same keyword-only options (seconds as floats) and builds a
:class:`PoolConfig` from them; impossible values raise ``ValueError`` naming the option, at
construction, before anything connects. ``tether doctor`` advises from the same defaults
(:data:`DEFAULTS`) and the same lifetime rule (:func:`lifetimes_under`).
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, TypedDict

from .classify import ErrorKind

__all__ = ["DEFAULTS", "Lifetimes", "PoolConfig", "PoolOptions", "lifetimes_under"]


class PoolOptions(TypedDict, total=False):
    """The keyword-only options of every pool flavour, for type checkers (defaults and
    meanings: :class:`PoolConfig`)."""

    max_size: int
    min_size: int
    timeout: float
    connect_timeout: float
    ping_after: float
    ping_timeout: float
    max_lifetime: float | None
    idle_timeout: float | None
    keepalive: float | None
    autocommit: bool
    init_commands: Sequence[str]
    leak_timeout: float | None
    replay_reads: bool
    evict_on_read_only: str
    error_kinds: Mapping[int, ErrorKind | str]
    connect_args: Mapping[str, Any]
    watchdog: float | None
    query_timeout: float | None
    maintenance_interval: float
    name: str | None
    budget: Any
    budget_key: str | None
    budget_cap: int | None
    budget_reserve: int
    budget_ttl: float


@dataclass(frozen=True)
class PoolConfig:
    """What a pool was asked to do. Seconds everywhere; ``None`` switches a limit off."""

    #: Bound on open (and opening) connections.
    max_size: int = 10
    #: Connections maintenance keeps open even when idle.
    min_size: int = 0
    #: How long a check-out may wait, connects and health checks included. With the
    #: defaults a server whose packets vanish costs a caller at most this long.
    timeout: float = 10.0
    #: Per connect attempt, the handshake included.
    connect_timeout: float = 5.0
    #: A connection idle longer than this is pinged before it is handed out.
    ping_after: float = 1.0
    #: Hard timeout of that ping.
    ping_timeout: float = 2.0
    #: Connections are retired after this long (lowered under the server's wait_timeout).
    max_lifetime: float | None = 1800.0
    #: Idle connections above min_size are closed after this long (lowered likewise).
    idle_timeout: float | None = 600.0
    #: Idle connections are pinged this often (and well before the server's wait_timeout).
    keepalive: float | None = 60.0
    #: Sessions run in autocommit mode: a read needs no transaction, a return no rollback.
    autocommit: bool = True
    #: Statements run on every new or reset session.
    init_commands: tuple[str, ...] = ()
    #: Warn, with the acquiring stack, about a connection held longer than this.
    leak_timeout: float | None = None
    #: Replay read-only statements after a lost connection, where the session allows it.
    replay_reads: bool = True
    #: After a read-only error (failover): evict the "connection" or the whole "pool".
    evict_on_read_only: str = "connection"
    #: Extends the error table: {errno: ErrorKind}.
    error_kinds: Mapping[int, ErrorKind] = field(default_factory=dict)
    #: Passed to the driver's connect().
    connect_args: Mapping[str, Any] = field(default_factory=dict)
    #: Check out of band on calls that have waited on the server this long.
    watchdog: float | None = 5.0
    #: Server-side statement timeout for every statement.
    query_timeout: float | None = None
    #: How often maintenance looks at the pool.
    maintenance_interval: float = 1.0
    #: The pool's name in logs, errors and stats.
    name: str | None = None
    #: A fleet-wide connection budget: a ``redis://`` / ``rediss://`` URL (or a
    #: :class:`tether.budget.Store`); every open connection then holds one of its leases.
    budget: Any = None
    #: Which budget: pools with the same key share one (default ``user@host:port``).
    budget_key: str | None = None
    #: The fleet's cap; default: the account's binding limit read from the server.
    budget_cap: int | None = None
    #: Left out of the cap read from the server (admin sessions, other tools).
    budget_reserve: int = 0
    #: A process that stops renewing (killed, host gone) loses its leases after this long.
    budget_ttl: float = 10.0

    def __post_init__(self) -> None:
        _check_int("max_size", self.max_size, minimum=1)
        _check_int("min_size", self.min_size, minimum=0)
        if self.min_size > self.max_size:
            raise ValueError(
                f"min_size ({self.min_size}) must not exceed max_size ({self.max_size})"
            )
        for option in (
            "timeout",
            "connect_timeout",
            "ping_timeout",
            "maintenance_interval",
        ):
            _check_seconds(option, getattr(self, option), positive=True)
        _check_seconds("ping_after", self.ping_after, positive=False)
        for option in (
            "max_lifetime",
            "idle_timeout",
            "keepalive",
            "leak_timeout",
            "watchdog",
            "query_timeout",
        ):
            if getattr(self, option) is not None:
                _check_seconds(option, getattr(self, option), positive=True)
        for option in ("autocommit", "replay_reads"):
            if not isinstance(getattr(self, option), bool):
                raise ValueError(f"{option} must be True or False, not {getattr(self, option)!r}")
        if self.evict_on_read_only not in ("connection", "pool"):
            raise ValueError(
                "evict_on_read_only must be 'connection' or 'pool',"
                f" not {self.evict_on_read_only!r}"
            )
        _check_budget(self)
        if self.name is not None and not isinstance(self.name, str):
            raise ValueError(f"name must be a string, not {self.name!r}")
        # Normalised copies: the frozen config never shares a caller's mutable object.
        object.__setattr__(self, "init_commands", _statements(self.init_commands))
        object.__setattr__(self, "error_kinds", _error_kinds(self.error_kinds))
        object.__setattr__(self, "connect_args", _connect_args(self.connect_args))

    @classmethod
    def from_options(cls, options: Mapping[str, Any]) -> PoolConfig:
        """Build from keyword options; an unknown name is a ``ValueError`` listing the known
        ones (a typo must not be ignored)."""
        unknown = sorted(set(options) - OPTION_NAMES)
        if unknown:
            raise ValueError(
                f"unknown pool option {unknown[0]!r}; known: {', '.join(sorted(OPTION_NAMES))}"
            )
        return cls(**options)

    def replace(self, **changes: Any) -> PoolConfig:
        return dataclasses.replace(self, **changes)


OPTION_NAMES = frozenset(f.name for f in dataclasses.fields(PoolConfig))


@dataclass(frozen=True)
class Lifetimes:
    """The limits a pool applies once the server's ``wait_timeout`` is known."""

    max_lifetime: float | None
    idle_timeout: float | None
    keepalive: float | None
    #: A connection idle this long is never handed out: the server may have dropped it.
    idle_limit: float | None


def lifetimes_under(config: PoolConfig, wait_timeout: float | None) -> Lifetimes:
    """The configured lifetimes, lowered under the server's ``wait_timeout`` with a margin
    (10%, at least a second): no connection is kept, or handed out, past what the server
    would keep. Keepalive pings idle connections at most half that apart."""
    if wait_timeout is None or wait_timeout <= 0:
        return Lifetimes(config.max_lifetime, config.idle_timeout, config.keepalive, None)
    limit = max(0.5, wait_timeout - max(1.0, 0.1 * wait_timeout))

    def under(value: float | None) -> float:
        return limit if value is None else min(value, limit)

    keepalive = None if config.keepalive is None else max(0.25, min(config.keepalive, limit / 2))
    return Lifetimes(under(config.max_lifetime), under(config.idle_timeout), keepalive, limit)


def _check_budget(config: PoolConfig) -> None:
    budget = config.budget
    if budget is not None and not isinstance(budget, str) and not hasattr(budget, "acquire"):
        raise ValueError(f"budget must be a redis:// URL or a budget store, not {budget!r}")
    if config.budget_key is not None and (
        not isinstance(config.budget_key, str) or not config.budget_key
    ):
        raise ValueError(f"budget_key must be a non-empty string, not {config.budget_key!r}")
    if config.budget_cap is not None:
        _check_int("budget_cap", config.budget_cap, minimum=1)
    _check_int("budget_reserve", config.budget_reserve, minimum=0)
    _check_seconds("budget_ttl", config.budget_ttl, positive=True)
    if budget is not None and config.budget_ttl < 2 * config.maintenance_interval:
        raise ValueError(
            f"budget_ttl ({config.budget_ttl}s) must be at least twice maintenance_interval"
            f" ({config.maintenance_interval}s): leases are renewed by maintenance"
        )


def _check_int(option: str, value: object, *, minimum: int) -> None:
    if not isinstance(value, int) or isinstance(value, bool) or value < minimum:
        raise ValueError(f"{option} must be an integer >= {minimum}, not {value!r}")


def _check_seconds(option: str, value: object, *, positive: bool) -> None:
    ok = (
        isinstance(value, (int, float))
        and not isinstance(value, bool)
        and math.isfinite(value)
        and (value > 0 if positive else value >= 0)
    )
    if not ok:
        bound = "a positive number" if positive else "a number >= 0"
        raise ValueError(f"{option} must be {bound} of seconds, not {value!r}")


def check_timeout(value: object) -> float:
    """A per-call ``timeout`` argument, validated like the option of that name."""
    _check_seconds("timeout", value, positive=True)
    return float(value)  # type: ignore[arg-type]


def _statements(value: object) -> tuple[str, ...]:
    if isinstance(value, (str, bytes)) or not isinstance(value, Sequence):
        raise ValueError(f"init_commands must be a sequence of statements (a list), not {value!r}")
    for statement in value:
        if not isinstance(statement, str) or not statement.strip():
            raise ValueError(f"init_commands must hold SQL strings, not {statement!r}")
    return tuple(value)


def _error_kinds(value: object) -> dict[int, ErrorKind]:
    if not isinstance(value, Mapping):
        raise ValueError(f"error_kinds must be a dict {{errno: ErrorKind}}, not {value!r}")
    kinds: dict[int, ErrorKind] = {}
    names = ", ".join(repr(kind.value) for kind in ErrorKind)
    for code, given in value.items():
        if not isinstance(code, int) or isinstance(code, bool) or code < 0:
            raise ValueError(f"error_kinds: {code!r} is not a MySQL error number")
        kind = given
        if isinstance(given, str) and not isinstance(given, ErrorKind):
            try:
                kind = ErrorKind(given)
            except ValueError:
                raise ValueError(
                    f"error_kinds[{code}]: {given!r} is not an ErrorKind (one of {names})"
                ) from None
        if not isinstance(kind, ErrorKind):
            raise ValueError(f"error_kinds[{code}]: {given!r} is not an ErrorKind ({names})")
        kinds[code] = kind
    return kinds


# Given in the DSN, never in connect_args: one place for the server and the account.
_RESERVED_ARGS = ("password", "passwd", "user", "host", "port", "database", "db")


def _connect_args(value: object) -> dict[str, Any]:
    if not isinstance(value, Mapping):
        raise ValueError(f"connect_args must be a dict of driver arguments, not {value!r}")
    for name in value:
        if not isinstance(name, str):
            raise ValueError(f"connect_args keys must be argument names, not {name!r}")
        if name in _RESERVED_ARGS:
            raise ValueError(f"connect_args must not set {name!r}: put it in the DSN")
    return dict(value)


#: The defaults every pool starts from (and ``tether doctor`` advises from).
DEFAULTS = PoolConfig()
