"""What a statement's text says about replaying it and about the session it ran in.

Plain text functions, no I/O: whether a statement only reads (a replay on a fresh session
changes nothing), and whether it may leave session state the server's own tracking does not
report (a user variable assigned inside a statement, an advisory lock).
"""

from __future__ import annotations

import math
import re

__all__ = ["first_word", "is_read_only", "leaves_session_state", "with_statement_timeout"]

_LEADING = re.compile(r"(?:\s+|/\*.*?\*/|(?:--\s|#)[^\n]*(?:\n|$)|\()*", re.S)
_READ_ONLY_WORDS = {"SELECT", "SHOW", "DESCRIBE", "DESC", "EXPLAIN", "HELP", "VALUES", "TABLE"}
DML_WORDS = frozenset({"INSERT", "UPDATE", "DELETE", "REPLACE"})
_WRITE_INSIDE = re.compile(r"\b(INSERT|UPDATE|DELETE|REPLACE|INTO\s+(OUTFILE|DUMPFILE))\b", re.I)
_INTO_FILE = re.compile(r"\bINTO\s+(OUTFILE|DUMPFILE)\b", re.I)


def _text(query: str | bytes) -> str:
    return query.decode("utf-8", "replace") if isinstance(query, bytes) else query


def first_word(query: str | bytes) -> str:
    """The statement's first keyword, upper case, past comments and parentheses."""
    text = _text(query)
    start = _LEADING.match(text)
    rest = text[start.end() if start else 0 :]
    end = 0
    while end < len(rest) and (rest[end].isalpha() or rest[end] == "_"):
        end += 1
    return rest[:end].upper()


def is_read_only(query: str | bytes) -> bool:
    """Whether running ``query`` again on a fresh session can change nothing on the server.

    ``SELECT``/``SHOW``/``EXPLAIN``-like statements, and ``WITH`` queries with no write in
    them. A ``SELECT`` calling a function with side effects is the caller's business:
    ``Pool(replay_reads=False)`` turns read replays off.
    """
    if _several(query):
        return False  # a multi-statement: the others are not looked at
    word = first_word(query)
    if word in _READ_ONLY_WORDS:
        return not (word == "SELECT" and _INTO_FILE.search(_text(query)))
    if word == "WITH":
        return _WRITE_INSIDE.search(_text(query)) is None
    return False


def _several(query: str | bytes) -> bool:
    """Whether ``query`` may hold more than one statement (a ``;`` before its end). Errs on
    the side of "yes": a ``;`` inside a string literal counts too."""
    text = _text(query).rstrip().rstrip(";")
    return ";" in text


def leaves_session_state(query: str | bytes) -> bool:
    """Whether ``query`` may leave state in its session that the server's session tracking
    does not flag: a user variable assigned inside a statement (``SELECT @n := ...``,
    ``... INTO @n``), an advisory lock (``GET_LOCK``) or a temporary table made by
    ``CREATE TEMPORARY TABLE ... AS SELECT`` (which the server does not flag, unlike the
    plain form). Runs after every statement, so it is a few substring searches rather than
    a parse; it errs on the side of "yes"."""
    if isinstance(query, bytes):
        text_b = query.upper()
        return (
            b"GET_LOCK" in text_b
            or b"TEMPORARY" in text_b
            or (b"@" in text_b and (b":=" in text_b or b"INTO" in text_b))
        )
    text = query.upper()
    return (
        "GET_LOCK" in text
        or "TEMPORARY" in text
        or ("@" in text and (":=" in text or "INTO" in text))
    )


def server_seconds(timeout: float) -> str:
    """``timeout`` as MariaDB's ``max_statement_time`` takes it: rounded up to the
    millisecond, never to 0 (which the server reads as "no limit")."""
    return f"{math.ceil(timeout * 1000) / 1000:.3f}"


def server_milliseconds(timeout: float) -> int:
    """``timeout`` as MySQL's ``max_execution_time`` takes it: whole milliseconds, rounded
    up, never 0 (no limit)."""
    return max(1, math.ceil(timeout * 1000))


def with_statement_timeout(query: str | bytes, timeout: float, *, mariadb: bool) -> str | bytes:
    """``query`` bounded to ``timeout`` seconds on the server, which aborts it with an error
    and keeps the session (MariaDB ``max_statement_time``; MySQL: ``SELECT`` only)."""
    if isinstance(timeout, bool) or not isinstance(timeout, (int, float)) or not timeout > 0:
        raise ValueError(f"timeout must be a positive number of seconds, not {timeout!r}")
    text = _text(query)
    if mariadb:
        text = f"SET STATEMENT max_statement_time = {server_seconds(timeout)} FOR {text}"
    else:
        if first_word(text) != "SELECT":
            raise ValueError("on MySQL a statement timeout applies to SELECT only")
        # The hint follows the statement's own SELECT (past comments and parentheses).
        leading = _LEADING.match(text)
        start = leading.end() if leading else 0
        hint = f"SELECT /*+ MAX_EXECUTION_TIME({server_milliseconds(timeout)}) */"
        text = text[:start] + hint + text[start + len("SELECT") :]
    return text.encode() if isinstance(query, bytes) else text
