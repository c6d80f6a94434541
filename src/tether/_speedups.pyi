from collections.abc import Callable, Iterator
from typing import Any

SOURCE_SHA256: str

class StatusReader:
    def __init__(self, owner: Any, function: int, handle: int, key: int) -> None: ...
    def __call__(self) -> int: ...

class Samples:
    def __init__(self, maxlen: int) -> None: ...
    def append(self, value: float, /) -> None: ...
    def __len__(self) -> int: ...
    def __iter__(self) -> Iterator[float]: ...

class EntryCore:
    broken: bool
    busy_since: float
    checked_out_at: float
    expires: float
    last_active: float
    leak_reported: bool
    parked: bool
    returned_at: float
    session_dirty: bool
    tainted: bool
    pid: int
    last_status: int
    unbuffered: int
    owner: int | None

class PoolCore:
    _fresh_for: float
    _pid: int
    _release_mask: int
    _clean_bits: int
    _closed: bool
    _fast_checkouts: int
    _parked: int

class ThreadCache:
    def __init__(self) -> None: ...
    def clear(self) -> None: ...
    def get(self) -> Any: ...
    def __len__(self) -> int: ...

def bind(
    *,
    pool: type[Any],
    entry: type[Any],
    proxy: type[Any],
    cursor: type[Any],
    idle: object,
    in_use: object,
    trusted: float,
    cursor_py: Callable[..., Any],
    execute_py: Callable[..., Any],
) -> dict[str, Callable[..., Any]]: ...
def fast_getattr(on: bool, /) -> bool: ...
