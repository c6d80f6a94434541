from collections.abc import Callable
from typing import Any

SOURCE_SHA256: str

class StatusReader:
    def __init__(self, owner: Any, function: int, handle: int, key: int) -> None: ...
    def __call__(self) -> int: ...

class Tally:
    def __init__(self) -> None: ...
    def __int__(self) -> int: ...
    def __index__(self) -> int: ...

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
