"""The suite's fixtures come from tether's own pytest plugin, the one users load too:
``mariadb``, ``db``, ``mariadb_factory``, ``fault_proxy`` and ``driver``
(see tether.testing.pytest_plugin). Added here: ``flavour`` (both pool classes) and ``pools``,
which makes pools of that flavour and the ``driver`` under test and closes them afterwards."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

import pytest

import tether

pytest_plugins = ["tether.testing.pytest_plugin"]


@pytest.fixture(params=[tether.Pool, tether.ThreadLocalPool], ids=["Pool", "ThreadLocalPool"])
def flavour(request: pytest.FixtureRequest) -> type[tether.Pool]:
    return request.param  # type: ignore[no-any-return]


@pytest.fixture
def pools(driver: str, flavour: type[tether.Pool]) -> Iterator[Callable[..., tether.Pool]]:
    made: list[tether.Pool] = []

    def make(dsn: str, **kwargs: Any) -> tether.Pool:
        kwargs.setdefault("driver", driver)
        pool = flavour(dsn, **kwargs)
        made.append(pool)
        return pool

    yield make
    for pool in made:
        pool.close()
