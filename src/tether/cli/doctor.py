"""``tether doctor``: a server's limits and timeouts, who holds its connections, and pool
settings that fit this application."""

from __future__ import annotations

import json
import sys

import click
from rich.console import Console
from rich.panel import Panel
from rich.table import Table

from ..dsn import parse_dsn
from ..errors import DSNError
from ..inspect import Advice, ServerReport, Usage, advise, inspect_server

ABORTED_HELP = {
    "Aborted_clients": "sessions dropped without a proper close (clients that died, or idle"
    " ones cut at wait_timeout)",
    "Aborted_connects": "failed connection attempts (bad passwords, caps, handshake timeouts)",
}


def _fmt(value: object) -> str:
    return "not visible" if value is None else str(value)


def _usage_table(title: str, rows: list[Usage]) -> Table:
    table = Table(title=title, title_justify="left")
    table.add_column("who")
    table.add_column("sessions", justify="right")
    table.add_column("sleeping", justify="right")
    table.add_column("longest sleep", justify="right")
    for usage in rows:
        table.add_row(
            usage.name, str(usage.sessions), str(usage.sleeping), f"{usage.longest_sleep}s"
        )
    return table


def render(report: ServerReport, advice: Advice, console: Console) -> None:
    console.print(
        f"[bold]{report.server}[/bold]  MariaDB/MySQL {report.version}, as {report.current_user}"
    )
    timeouts = Table(title="Timeouts (seconds)", title_justify="left")
    timeouts.add_column("variable")
    timeouts.add_column("session", justify="right")
    timeouts.add_column("global", justify="right")
    for name, values in report.timeouts.items():
        timeouts.add_row(name, _fmt(values["session"]), _fmt(values["global"]))
    console.print(timeouts)

    limits = Table(title="Connection limits and use", title_justify="left")
    limits.add_column("what")
    limits.add_column("value", justify="right")
    limits.add_row("max_connections", _fmt(report.max_connections))
    limits.add_row(
        "max_user_connections (global, 0 = none)", _fmt(report.max_user_connections_global)
    )
    limits.add_row("this account's MAX_USER_CONNECTIONS (0 = none)", _fmt(report.user_limit))
    for name, value in report.status.items():
        limits.add_row(name, _fmt(value))
    console.print(limits)
    for name, help_text in ABORTED_HELP.items():
        console.print(f"  {name}: {help_text}")

    scope = "all sessions" if report.sees_all_sessions else "this user's sessions only"
    console.print(_usage_table(f"Sessions by user ({scope})", report.by_user))
    console.print(_usage_table(f"Sessions by client host ({scope})", report.by_host))
    for note in report.notes:
        console.print(f"[yellow]note:[/yellow] {note}")

    lines = [
        f"For {advice.processes} process(es) x {advice.threads} thread(s):",
        f"  binding limit: {advice.cap_source}"
        + (f" = {advice.cap}, {advice.budget} usable by this app" if advice.cap else ""),
        f"  pool size per process: {advice.pool_size}",
    ]
    if advice.max_lifetime is not None:
        lines.append(
            f"  lifetimes under wait_timeout: max_lifetime={advice.max_lifetime:g}s,"
            f" idle_timeout={advice.idle_timeout:g}s, keepalive={advice.keepalive:g}s"
        )
    lines.append(f"  {advice.pool_line()}")
    console.print(Panel("\n".join(lines), title="Advice", title_align="left"))
    for warning in advice.warnings:
        console.print(f"[bold red]WARNING:[/bold red] {warning}")


@click.command()
@click.argument("dsn", required=False)
@click.option("--driver", type=click.Choice(["pymysql", "mysqlclient"]), default="pymysql")
@click.option(
    "--processes",
    type=click.IntRange(min=1),
    default=1,
    show_default=True,
    help="Processes of the application (workers).",
)
@click.option(
    "--threads",
    type=click.IntRange(min=1),
    default=16,
    show_default=True,
    help="Threads per process.",
)
@click.option("--connect-timeout", type=click.FloatRange(min=0.1), default=5.0, show_default=True)
@click.option("--json", "as_json", is_flag=True, help="One JSON object, for scripts.")
def doctor(
    dsn: str | None,
    driver: str,
    processes: int,
    threads: int,
    connect_timeout: float,
    as_json: bool,
) -> None:
    """Explain a server's limits and who uses its connections.

    DSN defaults to $DATABASE_URL (mysql://user:password@host:3306/database).
    """
    err = Console(stderr=True)
    try:
        parsed = parse_dsn(dsn)
    except DSNError as exc:
        err.print(f"[red]error:[/red] {exc}")
        sys.exit(2)
    try:
        report = inspect_server(parsed, driver=driver, connect_timeout=connect_timeout)
    except ImportError as exc:
        err.print(f"[red]error:[/red] {exc}")
        sys.exit(2)
    except Exception as exc:
        # The drivers' messages name the user and host, never the password.
        err.print(f"[red]error:[/red] cannot inspect {parsed.redacted()}: {exc}")
        sys.exit(2)
    advice = advise(report, processes=processes, threads=threads)
    if as_json:
        click.echo(json.dumps({"server": report.as_dict(), "advice": advice.as_dict()}, indent=2))
        return
    render(report, advice, Console())
