"""tether for asyncio: :class:`AsyncPool`, with :class:`tether.Pool`'s guarantees and safe
cancellation, on asyncmy or aiomysql (``pip install 'tether[asyncmy]'`` or
``'tether[aiomysql]'``). The drivers are imported when a pool is made."""

from __future__ import annotations

from .checkout import Checkout
from .connection import AsyncConnection, AsyncCursor
from .pool import AsyncPool

__all__ = ["AsyncConnection", "AsyncCursor", "AsyncPool", "Checkout"]
