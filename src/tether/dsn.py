"""DSN URLs: ``mysql://user:password@host:3306/db?charset=utf8mb4&connect_timeout=5``.

Accepted schemes: ``mysql``, ``mariadb``, and ``mysql+pymysql`` / ``mysql+mysqldb`` /
``mysql+mysqlclient``, and for ``tether.AsyncPool`` ``mysql+asyncmy`` / ``mysql+aiomysql`` (the
part after ``+`` names the driver, as SQLAlchemy URLs do). The password
may be percent-encoded. ``unix_socket`` in the query selects a socket instead of TCP.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import parse_qsl, unquote, urlsplit

from .errors import DSNError

__all__ = ["DSN", "parse_dsn"]

_SCHEMES = {
    "mysql": None,
    "mariadb": None,
    "mysql+pymysql": "pymysql",
    "mariadb+pymysql": "pymysql",
    "mysql+mysqldb": "mysqlclient",
    "mysql+mysqlclient": "mysqlclient",
    "mariadb+mysqldb": "mysqlclient",
    "mariadb+mysqlclient": "mysqlclient",
    # The asyncio drivers (tether.AsyncPool).
    "mysql+asyncmy": "asyncmy",
    "mariadb+asyncmy": "asyncmy",
    "mysql+aiomysql": "aiomysql",
    "mariadb+aiomysql": "aiomysql",
}

# Query options understood by both drivers, with the type they are converted to.
_INT_OPTIONS = {"port"}
_FLOAT_OPTIONS = {"connect_timeout", "read_timeout", "write_timeout"}
_STR_OPTIONS = {
    "charset",
    "collation",
    "unix_socket",
    "ssl_ca",
    "ssl_cert",
    "ssl_key",
    "init_command",
    "sql_mode",
}
_BOOL_OPTIONS = {"ssl_disabled", "ssl_verify_cert", "ssl_verify_identity"}
_TRUE = {"1", "true", "yes", "on"}
_FALSE = {"0", "false", "no", "off"}


@dataclass(frozen=True)
class DSN:
    """A parsed DSN. The password is kept out of ``repr`` and ``str``."""

    host: str = "127.0.0.1"
    port: int = 3306
    user: str = ""
    password: str = field(default="", repr=False)
    database: str | None = None
    driver: str | None = None
    options: dict[str, Any] = field(default_factory=dict)

    def __str__(self) -> str:
        return self.redacted()

    def redacted(self) -> str:
        """The DSN as a URL with the password replaced by ``***``."""
        auth = self.user + (":***" if self.password else "")
        where = self.options.get("unix_socket") or f"{self.host}:{self.port}"
        return f"mysql://{auth}@{where}/{self.database or ''}"

    @property
    def address(self) -> str:
        """Where the server is, for messages: ``host:port`` or the socket path."""
        return str(self.options.get("unix_socket") or f"{self.host}:{self.port}")


def _convert(name: str, value: str) -> Any:
    if name in _INT_OPTIONS:
        if not value.isdigit() or not 0 < int(value) < 65536:
            raise DSNError(f"DSN option {name}={value!r} is not a port number in 1-65535")
        return int(value)
    try:
        if name in _FLOAT_OPTIONS:
            number = float(value)
            if number <= 0:
                raise ValueError
            return number
    except ValueError:
        raise DSNError(f"DSN option {name}={value!r} is not a positive number") from None
    if name in _BOOL_OPTIONS:
        low = value.lower()
        if low in _TRUE:
            return True
        if low in _FALSE:
            return False
        raise DSNError(f"DSN option {name}={value!r} is not a boolean (use true or false)")
    return value


_UNENCODED = (
    "DSN cannot be parsed: the user or password holds a character that must be"
    " percent-encoded ('/' as %2F, '@' as %40, '?' as %3F, '#' as %23, ':' in the user as %3A;"
    " urllib.parse.quote(password, safe='') does it)"
)


_HOST_AFTER_AT = re.compile(r"[A-Za-z0-9.\-\[\]]+(?::\d+)?(?:[/?#]|$)")


def _unencoded_userinfo(dsn: str) -> bool:
    """Whether an unencoded '/', '?' or '#' in the credentials cut the URL's authority
    short: the authority (up to the first '/', '?' or '#') holds no '@', yet the text ends
    in ``@host[:port]`` and what comes before that '@' reads as ``user:password`` (a ':',
    no whitespace). An '@' in an option's value, such as ``init_command=SET @x=1``, does
    not look like that."""
    rest = dsn.split("://", 1)[1]
    cut = min((i for i in (rest.find("/"), rest.find("?"), rest.find("#")) if i >= 0), default=-1)
    if cut < 0 or "@" in rest[:cut] or "@" not in rest:
        return False
    credentials, _, host = rest.rpartition("@")
    return (
        _HOST_AFTER_AT.fullmatch(host.split("/")[0] + ("/" if "/" in host else "")) is not None
        and ":" in credentials
        and not any(c.isspace() for c in credentials)
    )


def parse_dsn(dsn: str | DSN | None) -> DSN:
    """Parse ``dsn``; ``None`` means the ``DATABASE_URL`` environment variable; a :class:`DSN`
    is returned as it is.

    Raises :class:`tether.DSNError` (a ``ValueError``) naming what is wrong, never echoing the
    password.
    """
    if isinstance(dsn, DSN):
        return dsn
    if dsn is None:
        dsn = os.environ.get("DATABASE_URL")
        if not dsn:
            raise DSNError("no DSN given and DATABASE_URL is not set")
    if not isinstance(dsn, str):
        raise DSNError(f"DSN must be a string, not {type(dsn).__name__}")
    if "://" not in dsn:
        raise DSNError("DSN must be a URL such as mysql://user:password@host:3306/database")
    try:
        parts = urlsplit(dsn)
        port = parts.port
    except ValueError as exc:
        # urlsplit's message can quote the netloc, password included: say it in our words.
        if _unencoded_userinfo(dsn):
            raise DSNError(_UNENCODED) from None
        reason = "port is not a number in 1-65535" if "ort" in str(exc) else "malformed URL"
        raise DSNError(f"DSN cannot be parsed: {reason}") from None
    if _unencoded_userinfo(dsn):
        raise DSNError(_UNENCODED)
    if port == 0:
        raise DSNError("DSN cannot be parsed: port is not a number in 1-65535")
    scheme = parts.scheme.lower()
    if scheme not in _SCHEMES:
        known = ", ".join(sorted(_SCHEMES))
        raise DSNError(f"DSN scheme {scheme!r} is not supported (use one of: {known})")
    options: dict[str, Any] = {}
    for key, value in parse_qsl(parts.query, keep_blank_values=True):
        name = key.lower()
        known_names = _INT_OPTIONS | _FLOAT_OPTIONS | _STR_OPTIONS | _BOOL_OPTIONS
        if name not in known_names:
            raise DSNError(
                f"DSN option {key!r} is not known (known: {', '.join(sorted(known_names))})"
            )
        options[name] = _convert(name, value)
    if "port" in options:
        port = options.pop("port")
    database = unquote(parts.path.lstrip("/")) or None
    if database and "/" in database:
        raise DSNError("DSN path must be a single database name")
    host = parts.hostname or ("localhost" if "unix_socket" in options else "")
    if not host:
        raise DSNError("DSN has no host (mysql://user:password@HOST:3306/database)")
    return DSN(
        host=host,
        port=port if port is not None else 3306,
        user=unquote(parts.username or ""),
        password=unquote(parts.password or ""),
        database=database,
        driver=_SCHEMES[scheme],
        options=options,
    )
