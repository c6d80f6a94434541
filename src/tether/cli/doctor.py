"""``tether doctor``: a server's limits and timeouts, who holds its connections, and pool
settings that fit this application.

Every failure to get that far (a bad DSN, a missing driver, a server that cannot be reached or
refuses the login) is one line on stderr and exit status 2: no traceback, never the password.
"""

from __future__ import annotations

import json
import sys
from typing import Any, NoReturn

import click
from rich.console import Console
from rich.table import Table
from rich.text import Text

from ..advice import Advice, advise
from ..budget.report import BudgetReport
from ..dsn import DSN, parse_dsn
from ..errors import DSNError
from ..inspect import ABORTED_HELP, ServerReport, Usage, inspect_server

EXIT_ERROR = 2

# Hints for the errors one meets connecting, keyed by MySQL error number.
_HINTS = {
    1040: "the server is at max_connections",
    1045: "check the user and password",
    1049: "the database in the DSN does not exist",
    1226: "this account is at its MAX_USER_CONNECTIONS: its own sessions hold every slot",
    1044: "the account has no privileges on that database: leave it out of the DSN",
    2003: "nothing answers at that address, or a firewall drops the connection",
    2005: "the host name does not resolve",
    2013: "the server did not answer in time, or closed the connection (a proxy? TLS?)",
}


def _fail(message: str, dsn: DSN | None = None) -> NoReturn:
    line = " ".join(message.split())  # one line, whatever the driver put in its message
    if dsn is not None and dsn.password:
        # Drivers don't echo passwords; this makes sure of it.
        line = line.replace(dsn.password, "***")
    click.echo(f"tether doctor: error: {line}", err=True)
    sys.exit(EXIT_ERROR)


def _describe(exc: BaseException) -> str:
    args: tuple[Any, ...] = tuple(getattr(exc, "args", ()))
    if len(args) >= 2 and isinstance(args[0], int):
        text = f"{args[1]} (error {args[0]})"
        hint = _HINTS.get(args[0])
        return f"{text}: {hint}" if hint else text
    return str(exc) or type(exc).__name__


def _show(value: int | float | None, zero: str | None = None) -> str:
    if value is None:
        return "not visible"
    if value == 0 and zero is not None:
        return f"0 ({zero})"
    return f"{value:g}" if isinstance(value, float) else str(value)


def _usage_table(title: str, column: str, rows: list[Usage]) -> Table:
    table = Table(title=title, title_justify="left", title_style="bold")
    table.add_column(column)
    table.add_column("sessions", justify="right")
    table.add_column("sleeping", justify="right")
    table.add_column("longest sleep (s)", justify="right")
    for usage in rows:
        table.add_row(
            Text(usage.name),
            str(usage.sessions),
            str(usage.sleeping),
            "-" if usage.longest_sleep is None else str(usage.longest_sleep),
        )
    if not rows:
        table.add_row("(none besides this one)", "0", "0", "-")
    return table


def render(report: ServerReport, advice: Advice, console: Console) -> None:
    """The human-readable report."""
    console.print(Text.assemble(("Server   ", "bold"), report.server))
    console.print(
        Text.assemble(
            ("Version  ", "bold"),
            report.version or "not visible",
            f", connected as {report.current_user} with {report.driver}",
        )
    )
    console.print()

    timeouts = Table(title="Timeouts (seconds)", title_justify="left", title_style="bold")
    timeouts.add_column("variable")
    timeouts.add_column("this session", justify="right")
    timeouts.add_column("global", justify="right")
    for setting in report.timeouts:
        timeouts.add_row(
            setting.name,
            _show(setting.session),
            _show(setting.global_) if setting.differs else "same",
        )
    console.print(timeouts)

    limits = Table(title="Connection limits", title_justify="left", title_style="bold")
    limits.add_column("limit")
    limits.add_column("value", justify="right")
    limits.add_column("read from")
    limits.add_row("max_connections", _show(report.max_connections), "@@GLOBAL")
    limits.add_row(
        "max_user_connections (global)",
        _show(report.max_user_connections, zero="no limit"),
        "@@GLOBAL",
    )
    account = report.account_max_user_connections
    limits.add_row(
        Text(f"MAX_USER_CONNECTIONS of {report.current_user}"),
        _show(account, zero="none set") if account is not None else "not visible",
        report.account_limit_source or report.not_visible.get("account_max_user_connections", ""),
    )
    console.print(limits)

    use = Table(title="Current use", title_justify="left")
    use.title_style = "bold"
    use.add_column("status")
    use.add_column("value", justify="right")
    use.add_column("meaning")
    meanings = {
        "Threads_connected": "sessions open now (this one included)",
        "Max_used_connections": "the most sessions open at once since the server started",
        **ABORTED_HELP,
    }
    for name, value in report.status.items():
        use.add_row(name, _show(value), meanings.get(name, ""))
    console.print(use)

    console.print()
    scope = (
        "all accounts"
        if report.sees_all_sessions
        else "this account's own only: other accounts' need the PROCESS privilege"
    )
    if "sessions" not in report.not_visible:
        console.print(Text(f"Sessions now ({scope}; the doctor's own not counted)", "bold"))
        console.print(_usage_table("by user", "user", report.by_user))
        console.print(_usage_table("by client host", "host", report.by_host))

    if report.not_visible:
        console.print()
        console.print(Text("Not visible to this account", style="bold"))
        _lines(
            console, [f"{what}: not visible ({why})" for what, why in report.not_visible.items()]
        )

    console.print()
    console.print(
        Text(f"Advice for {advice.processes} process(es) x {advice.threads} thread(s)", "bold")
    )
    facts = [*advice.reasons]
    facts.append(
        f"pool size per process: {advice.pool_size} (the fleet holds at most"
        f" {advice.fleet_size}); timeout {advice.timeout:g}s, a third of a"
        " request's time, so a request waiting for a connection fails cleanly"
    )
    if advice.max_lifetime is not None:
        facts.append(
            f"lifetimes under wait_timeout: max_lifetime {advice.max_lifetime:g}s,"
            f" idle_timeout {advice.idle_timeout:g}s, keepalive {advice.keepalive:g}s"
        )
    _lines(console, facts, bullet="-")
    console.print()
    console.print(Text(f"  {advice.pool_line()}", style="bold green"), soft_wrap=True)
    if advice.warnings:
        console.print()
        _lines(console, advice.warnings, bullet="WARNING:", bullet_style="bold red")


def _lines(
    console: Console,
    lines: list[str],
    *,
    bullet: str = "",
    style: str = "",
    bullet_style: str = "",
) -> None:
    """Lines that wrap under their own start, not under the bullet."""
    grid = Table.grid(padding=(0, 1))
    grid.add_column(width=max(1, len(bullet) + 1), justify="right", style=bullet_style)
    grid.add_column(style=style)
    for line in lines:
        grid.add_row(bullet, Text(line))
    console.print(grid)


@click.command()
@click.argument("dsn", required=False)
@click.option(
    "--driver",
    type=click.Choice(["pymysql", "mysqlclient"]),
    default=None,
    help="Driver to connect with.  [default: the DSN's scheme, else pymysql]",
)
@click.option(
    "--processes",
    type=click.IntRange(min=1),
    default=1,
    show_default=True,
    help="Processes of the application (workers), one pool each.",
)
@click.option(
    "--threads",
    type=click.IntRange(min=1),
    default=16,
    show_default=True,
    help="Threads per process that use the database.",
)
@click.option(
    "--request-timeout",
    type=click.FloatRange(min=0.1),
    default=30.0,
    show_default=True,
    help="How long a request may take (the pool's timeout is set well under it).",
)
@click.option(
    "--connect-timeout",
    type=click.FloatRange(min=0.1),
    default=5.0,
    show_default=True,
    help="Seconds to wait for the server.",
)
@click.option(
    "--budget",
    "budget_url",
    metavar="URL",
    default=None,
    help="Also show the fleet-wide budget kept in this Redis (redis://, rediss://).",
)
@click.option(
    "--budget-key",
    default=None,
    help="The budget's key.  [default: user@host:port of the DSN, as the pools use]",
)
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object, for scripts.")
def doctor(
    dsn: str | None,
    driver: str | None,
    processes: int,
    threads: int,
    request_timeout: float,
    connect_timeout: float,
    budget_url: str | None,
    budget_key: str | None,
    as_json: bool,
) -> None:
    """Explain a server's limits and who uses its connections.

    DSN: mysql://user:password@host:3306/database (default: $DATABASE_URL).
    """
    try:
        parsed = parse_dsn(dsn)
    except DSNError as exc:
        _fail(str(exc))
    try:
        report = inspect_server(parsed, driver=driver, connect_timeout=connect_timeout)
    except ImportError as exc:
        _fail(str(exc), parsed)
    except Exception as exc:
        _fail(f"cannot inspect {parsed.redacted()}: {_describe(exc)}", parsed)
    advice = advise(
        report.limits(),
        processes,
        threads,
        request_timeout=request_timeout,
        driver=report.driver,
    )
    budget = None if budget_url is None else _read_budget(budget_url, budget_key, parsed)
    if as_json:
        extra = {} if budget is None else {"budget": budget.as_dict()}
        click.echo(json.dumps({**report.as_dict(), "advice": advice.as_dict(), **extra}, indent=2))
        return
    console = Console(highlight=False)
    render(report, advice, console)
    if budget is not None:
        render_budget(budget, console)


def _read_budget(url: str, key: str | None, dsn: DSN) -> BudgetReport:
    """The budget's state, read from its store; a failure is one line, never the password."""
    from ..budget import RedisStore, default_key, redact_url
    from ..budget.report import budget_report

    try:
        store = RedisStore(url, key or default_key(dsn))
    except (ImportError, ValueError) as exc:
        _fail(str(exc), dsn)
    try:
        status = store.status()
    except store.errors as exc:
        _fail(f"cannot read the budget at {redact_url(url)}: {type(exc).__name__}", dsn)
    finally:
        store.close()
    return budget_report(status, store.url)


def render_budget(budget: BudgetReport, console: Console) -> None:
    """The fleet-wide budget: cap, leases by host and by process, idle ones, waiting."""
    console.print()
    console.print(Text.assemble(("Fleet budget ", "bold"), f"{budget.key!r} in {budget.store}"))
    cap = str(budget.cap) if budget.cap else "not known yet"
    _lines(
        console,
        [
            f"cap {cap}; {budget.total} leases held, {budget.idle} of them on idle connections;"
            f" {budget.demand} check-outs waiting for a lease",
        ],
        bullet="-",
    )
    hosts = Table(title="Leases by host", title_justify="left", title_style="bold")
    for column in ("host", "processes", "leases", "idle"):
        hosts.add_column(column, justify="left" if column == "host" else "right")
    for host, count, held, idle in budget.by_host():
        hosts.add_row(Text(host), str(count), str(held), str(idle))
    if not budget.holders:
        hosts.add_row("(no pool holds a lease)", "0", "0", "0")
    console.print(hosts)
    if budget.holders:
        procs = Table(title="Leases by process", title_justify="left", title_style="bold")
        for column in ("host", "pid", "pool", "leases", "idle", "waiting", "expires in (s)"):
            procs.add_column(column, justify="left" if column in ("host", "pool") else "right")
        for row in budget.holders:
            procs.add_row(
                Text(row.host),
                str(row.pid),
                Text(row.pool),
                str(row.held),
                str(row.idle),
                str(row.waiting),
                f"{row.expires_in:g}",
            )
        console.print(procs)
