"""Where the leases live: Redis, changed only by Lua scripts, so that every change is atomic
(two processes never take the last lease together).

One budget is six keys sharing one hash tag, ``tether:budget:{<key>}:...``, so that a Redis
Cluster keeps them in one slot (a script may only touch keys of one slot):

- ``holders`` (hash): leases held, by holder (one holder per pool per process);
- ``expiry`` (sorted set): when each holder's leases lapse (Redis's own clock, milliseconds),
  pushed back by every renewal: a holder that stops renewing (killed, host gone) loses its
  leases at the next script run after that;
- ``wanted`` (sorted set, all scores 0, so in the holders' names' order): holders with
  check-outs waiting for a lease; ``waiting`` (hash): how many;
- ``info`` (hash): host, process and pool of each holder, and its idle connections, for
  ``tether doctor``;
- ``meta`` (hash): ``cap``, ``total`` (leases held in all), ``demand`` (check-outs waiting),
  ``wheld`` (leases held by the waiting holders).

A lease costs one script run when a connection opens (``acquire``) and one when it closes
(``release``); a renewal (``renew``) per pool per maintenance round re-states what the pool
holds, which also re-registers its leases after Redis lost them (a restart without
persistence).
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any, Protocol
from urllib.parse import urlsplit, urlunsplit

from .rules import Snapshot

__all__ = ["HolderStatus", "RedisStore", "Status", "Store", "key_prefix", "redact_url"]


@dataclass(frozen=True)
class HolderStatus:
    holder: str
    held: int
    waiting: int
    expires_in: float
    info: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class Status:
    """A budget as ``tether doctor`` shows it."""

    key: str
    cap: int
    total: int
    demand: int
    holders: list[HolderStatus]


class Store(Protocol):
    """The operations a budget needs from where its leases live; every one atomic."""

    def acquire(
        self,
        holder: str,
        *,
        limit: int,
        cap: int,
        ttl: float,
        waiting: int,
        info: str,
        grace: float,
    ) -> tuple[bool, Snapshot]:
        """One more lease for ``holder`` if the fleet is under its cap (``cap``: the
        holder's idea of it, 0 if unknown; the store keeps the last one given) and the
        holder under ``limit``; else mark it as wanting (``waiting`` check-outs queued).
        None within ``grace`` seconds of the budget's keys being created (a new or
        restarted Redis): the live holders re-register meanwhile."""

    def release(self, holder: str, count: int) -> None:
        """``count`` leases of ``holder`` are free again (never below zero)."""

    def renew(
        self, holder: str, *, held: int, waiting: int, cap: int, ttl: float, info: str
    ) -> Snapshot:
        """``holder`` is alive, holds ``held`` leases and has ``waiting`` check-outs queued:
        its leases lapse ``ttl`` seconds from now unless renewed again."""

    def leave(self, holder: str) -> None:
        """``holder`` is gone for good (its pool closed with nothing open)."""

    def status(self) -> Status: ...


def key_prefix(key: str) -> str:
    """The common prefix of a budget's keys; the braces are Redis Cluster's hash tag."""
    return f"tether:budget:{{{key}}}:"


_SUFFIXES = ("holders", "expiry", "wanted", "waiting", "info", "meta")

# Shared by every script: Redis's clock, expired holders dropped (a bounded number per run,
# so a mass expiry is spread over several runs), and the helpers.
_PROLOGUE = """
local holders, expiry, wanted, waiting, info, meta =
  KEYS[1], KEYS[2], KEYS[3], KEYS[4], KEYS[5], KEYS[6]
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
-- When this budget's keys were (re)created: after a Redis restart that lost them, the live
-- holders re-register within one renewal; until then the store cannot know what is held.
local born = tonumber(redis.call('HGET', meta, 'born') or '0')
if born == 0 then
  born = now
  redis.call('HSET', meta, 'born', now)
end
local function held_by(h)
  return tonumber(redis.call('HGET', holders, h) or '0')
end
-- meta.wheld: the leases held by waiting holders, kept as holders enter and leave the set.
local function set_waiting(h, n)
  local old = tonumber(redis.call('HGET', waiting, h) or '0')
  if n > 0 then
    redis.call('HSET', waiting, h, n)
    if redis.call('ZADD', wanted, 0, h) == 1 then
      redis.call('HINCRBY', meta, 'wheld', held_by(h))
    end
  else
    redis.call('HDEL', waiting, h)
    -- (0 - n, not -n: Lua writes minus zero as "-0", which HINCRBY refuses)
    if redis.call('ZREM', wanted, h) == 1 then
      redis.call('HINCRBY', meta, 'wheld', 0 - held_by(h))
    end
  end
  if n ~= old then redis.call('HINCRBY', meta, 'demand', n - old) end
end
local function add_held(h, delta)
  if delta == 0 then return end
  redis.call('HINCRBY', holders, h, delta)
  redis.call('HINCRBY', meta, 'total', delta)
  if redis.call('ZSCORE', wanted, h) then redis.call('HINCRBY', meta, 'wheld', delta) end
end
local function drop(h)
  set_waiting(h, 0)
  add_held(h, 0 - held_by(h))
  redis.call('HDEL', holders, h)
  redis.call('HDEL', info, h)
  redis.call('ZREM', expiry, h)
end
for _, h in ipairs(redis.call('ZRANGEBYSCORE', expiry, '-inf', now, 'LIMIT', 0, 64)) do
  drop(h)
end
local function snapshot(h, granted, cap)
  local rank = redis.call('ZRANK', wanted, h)
  return {granted, cap, tonumber(redis.call('HGET', meta, 'total') or '0'), held_by(h),
          redis.call('ZCARD', wanted), rank or -1,
          tonumber(redis.call('HGET', meta, 'demand') or '0'), redis.call('HLEN', holders),
          tonumber(redis.call('HGET', meta, 'wheld') or '0')}
end
local function the_cap(given)
  if given > 0 then
    redis.call('HSET', meta, 'cap', given)
    return given
  end
  return tonumber(redis.call('HGET', meta, 'cap') or '0')
end
"""

# ARGV: holder, limit, cap, ttl (ms), waiting, info, grace (ms)
_ACQUIRE = (
    _PROLOGUE
    + """
local h, limit = ARGV[1], tonumber(ARGV[2])
local cap = the_cap(tonumber(ARGV[3]))
local total = tonumber(redis.call('HGET', meta, 'total') or '0')
local mine = held_by(h)
-- Until some holder has read the cap from the server, one lease in all: for that read.
local room = cap
if room <= 0 then room = 1 end
local granted = 0
local fresh = now - born < tonumber(ARGV[7])
if total < room and mine < limit and not fresh then
  add_held(h, 1)
  set_waiting(h, tonumber(ARGV[5]))
  granted = 1
else
  set_waiting(h, tonumber(ARGV[5]) + 1)
end
redis.call('ZADD', expiry, now + tonumber(ARGV[4]), h)
redis.call('HSET', info, h, ARGV[6])
return snapshot(h, granted, cap)
"""
)

# ARGV: holder, count
_RELEASE = (
    _PROLOGUE
    + """
local h, n = ARGV[1], tonumber(ARGV[2])
if redis.call('HEXISTS', holders, h) == 1 then
  add_held(h, 0 - math.min(held_by(h), n))
end
return 1
"""
)

# ARGV: holder, held, cap, ttl (ms), waiting, info
_RENEW = (
    _PROLOGUE
    + """
local h, held = ARGV[1], tonumber(ARGV[2])
local cap = the_cap(tonumber(ARGV[3]))
add_held(h, held - held_by(h))
set_waiting(h, tonumber(ARGV[5]))
redis.call('ZADD', expiry, now + tonumber(ARGV[4]), h)
redis.call('HSET', info, h, ARGV[6])
return snapshot(h, 0, cap)
"""
)

# ARGV: holder
_LEAVE = (
    _PROLOGUE
    + """
drop(ARGV[1])
return 1
"""
)

_STATUS = (
    _PROLOGUE
    + """
return {now, redis.call('HGETALL', meta), redis.call('HGETALL', holders),
        redis.call('ZRANGE', expiry, 0, -1, 'WITHSCORES'), redis.call('HGETALL', waiting),
        redis.call('HGETALL', info)}
"""
)


def redact_url(url: str) -> str:
    """``url`` with its password (and a user, which may be a token) replaced by ``***``."""
    try:
        parts = urlsplit(url)
        netloc = parts.netloc
    except ValueError:
        return "<unparsable URL>"
    if "@" in netloc:
        netloc = "***@" + netloc.rpartition("@")[2]
    return urlunsplit((parts.scheme, netloc, parts.path, parts.query, ""))


def _snapshot(reply: list[Any]) -> tuple[bool, Snapshot]:
    granted, cap, total, mine, wanting, rank, demand, holders, wanting_held = (
        int(v) for v in reply
    )
    return bool(granted), Snapshot(
        cap=cap,
        total=total,
        mine=mine,
        wanting=wanting,
        rank=rank,
        demand=demand,
        holders=holders,
        wanting_held=wanting_held,
    )


class RedisStore:
    """A budget's leases in Redis (``redis://`` or ``rediss://`` URL; password and TLS
    options come from the URL). Short socket timeouts: a store that does not answer within
    them counts as unreachable (see :class:`tether.budget.gate.Gate`)."""

    def __init__(self, url: str, key: str, *, timeout: float = 0.5) -> None:
        try:
            import redis
            from redis.backoff import NoBackoff
            from redis.retry import Retry
        except ImportError:
            raise ImportError(
                "a budget on Redis needs the redis package: pip install 'tether[redis]'"
            ) from None
        scheme = url.partition("://")[0].lower() if "://" in url else ""
        if scheme not in ("redis", "rediss", "unix"):
            raise ValueError(
                f"budget must be a redis://, rediss:// or unix:// URL, not {redact_url(url)!r}"
            )
        try:
            self._client = redis.Redis.from_url(
                url,
                socket_timeout=timeout,
                socket_connect_timeout=timeout,
                retry=Retry(NoBackoff(), 0),
                health_check_interval=0,
            )
            urlsplit(url).port  # noqa: B018 (raises on a port that is not a number)
        except ValueError as exc:
            # redis-py's message may quote the URL: never the password.
            raise ValueError(f"budget: bad Redis URL {redact_url(url)!r}: {_why(exc)}") from None
        self.url = redact_url(url)
        self.key = key
        prefix = key_prefix(key)
        self._keys = [prefix + suffix for suffix in _SUFFIXES]
        self._acquire = self._client.register_script(_ACQUIRE)
        self._release = self._client.register_script(_RELEASE)
        self._renew = self._client.register_script(_RENEW)
        self._leave = self._client.register_script(_LEAVE)
        self._status = self._client.register_script(_STATUS)
        #: What the store fails with when it cannot be reached.
        self.errors: tuple[type[BaseException], ...] = (redis.RedisError, OSError)

    def acquire(
        self,
        holder: str,
        *,
        limit: int,
        cap: int,
        ttl: float,
        waiting: int,
        info: str,
        grace: float,
    ) -> tuple[bool, Snapshot]:
        reply = self._acquire(
            keys=self._keys,
            args=[holder, limit, cap, int(ttl * 1000), waiting, info, int(grace * 1000)],
        )
        return _snapshot(reply)

    def release(self, holder: str, count: int) -> None:
        self._release(keys=self._keys, args=[holder, count])

    def renew(
        self, holder: str, *, held: int, waiting: int, cap: int, ttl: float, info: str
    ) -> Snapshot:
        reply = self._renew(
            keys=self._keys, args=[holder, held, cap, int(ttl * 1000), waiting, info]
        )
        return _snapshot(reply)[1]

    def leave(self, holder: str) -> None:
        self._leave(keys=self._keys, args=[holder])

    def status(self) -> Status:
        now, meta, held, expiry, waiting, info = self._status(keys=self._keys, args=[])
        meta_d = _pairs(meta)
        held_d = _pairs(held)
        expiry_d = _pairs(expiry)
        waiting_d = _pairs(waiting)
        info_d = _pairs(info)
        holders = []
        for holder in sorted(set(held_d) | set(expiry_d)):
            try:
                details = json.loads(info_d.get(holder, "{}"))
            except ValueError:
                details = {}
            holders.append(
                HolderStatus(
                    holder=holder,
                    held=int(held_d.get(holder, 0)),
                    waiting=int(waiting_d.get(holder, 0)),
                    expires_in=(float(expiry_d.get(holder, now)) - int(now)) / 1000,
                    info=details,
                )
            )
        return Status(
            key=self.key,
            cap=int(meta_d.get("cap", 0)),
            total=int(meta_d.get("total", 0)),
            demand=int(meta_d.get("demand", 0)),
            holders=holders,
        )

    def close(self) -> None:
        self._client.close()

    def __repr__(self) -> str:
        return f"<RedisStore {self.url} key {self.key!r}>"


def _pairs(flat: list[Any]) -> dict[str, str]:
    items = [v.decode() if isinstance(v, bytes) else str(v) for v in flat]
    return dict(zip(items[::2], items[1::2], strict=True))


def _why(exc: BaseException) -> str:
    text = str(exc)
    return text if "@" not in text else type(exc).__name__
