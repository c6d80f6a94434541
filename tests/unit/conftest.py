from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest

import tether

from .fakedriver import FakeDriver

DSN = "mysql://app:s3cret-pw@127.0.0.1:3306/app"


@pytest.fixture
def fake() -> FakeDriver:
    return FakeDriver()


@pytest.fixture
def make_pool(fake: FakeDriver) -> Iterator[Any]:
    pools: list[tether.Pool] = []

    def make(cls: type[tether.Pool] = tether.Pool, **kwargs: Any) -> tether.Pool:
        kwargs.setdefault("driver", fake)
        pool = cls(DSN, **kwargs)
        pools.append(pool)
        return pool

    yield make
    for pool in pools:
        pool.close()
