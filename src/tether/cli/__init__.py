"""The ``tether`` command: ``tether doctor`` and ``tether demo``.

Needs the ``cli`` extra (click, rich). Sub-commands live in their own modules and are imported
only when run, so ``tether --help`` stays fast.
"""

from __future__ import annotations

import importlib
from typing import Any

try:
    import click
except ImportError as exc:  # pragma: no cover - depends on the extra
    raise SystemExit("the tether command needs its extra: pip install 'tether[cli]'") from exc

__all__ = ["main"]

# name -> (module, attribute, one-line help)
_COMMANDS = {
    "doctor": (
        "tether.cli.doctor",
        "doctor",
        "Explain a server's limits and who uses its connections.",
    ),
    "demo": (
        "tether.cli.demo",
        "demo",
        "Inject faults into one workload run by naive code, the peers and tether.",
    ),
}


class _LazyGroup(click.Group):
    def list_commands(self, ctx: click.Context) -> list[str]:
        return sorted(_COMMANDS)

    def get_command(self, ctx: click.Context, name: str) -> click.Command | None:
        spec = _COMMANDS.get(name)
        if spec is None:
            return None
        module_name, attribute, _ = spec
        try:
            module = importlib.import_module(module_name)
        except ModuleNotFoundError as exc:
            if exc.name == module_name:
                return None  # not built yet
            raise
        command: click.Command = getattr(module, attribute)
        return command

    def format_commands(self, ctx: click.Context, formatter: Any) -> None:
        rows = [(name, _COMMANDS[name][2]) for name in self.list_commands(ctx)]
        with formatter.section("Commands"):
            formatter.write_dl(rows)


@click.group(cls=_LazyGroup)
@click.version_option(package_name="tether")
def main() -> None:
    """tether: MySQL/MariaDB connections that stay healthy."""
