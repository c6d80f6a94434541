"""The suite's fixtures come from tether's own pytest plugin, the one users load too:
``mariadb``, ``db``, ``mariadb_factory``, ``fault_proxy`` and ``driver``
(see tether.testing.pytest_plugin)."""

pytest_plugins = ["tether.testing.pytest_plugin"]
