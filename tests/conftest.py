pytest_plugins = ["tether.testing.pytest_plugin"]
