"""``tether demo``: one workload, the same injected faults, naive code, the peers and tether
side by side."""

from __future__ import annotations

import time
from pathlib import Path

import click
from rich.console import Console
from rich.progress import BarColumn, Progress, TaskID, TextColumn, TimeElapsedColumn

from ..demo import DEFAULT_KEYS, QUICK_KEYS, VARIANTS, DemoResult
from ..demo.report import phase_table, results_table, timeline
from ..demo.runner import open_target, run_demo
from ..errors import DSNError
from ..testing import ServerError


def _print_report(result: DemoResult, console: Console) -> None:
    console.print(results_table(result))
    console.print(phase_table(result))
    console.print("[bold]Errors that reached the application, by kind[/bold]")
    for v in result.variants:
        if v.failure is not None:
            continue
        kinds = ", ".join(f"{k} x{n}" for k, n in v.errors_by_kind().items()) or "none"
        console.print(f"  {v.title}: {kinds}")
        a = v.audit
        if a.unknown_written or a.unknown_not_written:
            console.print(
                f"    in doubt or hung writes: {a.unknown_written} happened,"
                f" {a.unknown_not_written} did not"
            )
        for note in v.notes:
            console.print(f"    note: {note}")
    console.print("[bold]Variants[/bold]")
    for v in result.variants:
        console.print(f"  {v.title}: {v.description}")
    console.print("[bold]Fault schedule (the same for every variant)[/bold]")
    for p in result.schedule:
        if p["skipped"] is None:
            console.print(f"  {p['title']}: {p['what']}")
    for note in result.notes:
        console.print(f"[yellow]note:[/yellow] {note}")


@click.command()
@click.option("--quick", is_flag=True, help="A short version (under a minute): shorter phases.")
@click.option(
    "--threads",
    type=click.IntRange(min=2, max=64),
    default=8,
    show_default=True,
    help="Application threads.",
)
@click.option(
    "--driver",
    type=click.Choice(["pymysql", "mysqlclient"]),
    default="pymysql",
    show_default=True,
    help="The driver every variant uses.",
)
@click.option(
    "--variants",
    "variant_keys",
    default=None,
    metavar="KEYS",
    help=f"Comma-separated subset of: {', '.join(VARIANTS)} (default: all; --quick: all but"
    " tether-tl).",
)
@click.option(
    "--output",
    type=click.Path(file_okay=False, path_type=Path),
    default=Path("demo-output"),
    show_default=True,
    help="Where the timeline chart and results.json go.",
)
@click.option("--json", "as_json", is_flag=True, help="Print the results as JSON too.")
@click.option(
    "--dsn",
    default=None,
    help="Run against this server instead of a private one (mysql://user:pass@host:port/db)."
    " Use an account only the demo uses: its sessions are killed. The demo creates and drops"
    " tether_demo_* tables in that database; the restart and idle faults are skipped.",
)
@click.option(
    "--admin-dsn",
    default=None,
    help="With --dsn: a privileged account for KILL and for making a capped user.",
)
@click.option(
    "--cap-dsn",
    default=None,
    help="With --dsn: an account whose MAX_USER_CONNECTIONS is below --threads.",
)
def demo(
    quick: bool,
    threads: int,
    driver: str,
    variant_keys: str | None,
    output: Path,
    as_json: bool,
    dsn: str | None,
    admin_dsn: str | None,
    cap_dsn: str | None,
) -> None:
    """Inject faults into one workload run by naive code, the peers and tether.

    --threads threads do reads by key and small transactions (INSERT a ledger row, UPDATE a
    counter, COMMIT) through each variant in turn, all traffic through a fault proxy, while
    the same faults happen: a connection cap below the thread count, idling past wait_timeout,
    a server restart, sessions killed inside transactions, every session killed, a blackhole.
    The ledger then tells which writes were lost, duplicated or half-done. By default a
    private throwaway MariaDB is started (and stopped); full run about 7 minutes.
    """
    if (admin_dsn or cap_dsn) and not dsn:
        raise click.UsageError("--admin-dsn and --cap-dsn go with --dsn")
    keys = (
        [k.strip() for k in variant_keys.split(",") if k.strip()]
        if variant_keys
        else list(QUICK_KEYS if quick else DEFAULT_KEYS)
    )
    unknown = [k for k in keys if k not in VARIANTS]
    if unknown or not keys:
        raise click.BadParameter(
            f"unknown variant(s) {', '.join(unknown) or '(none given)'};"
            f" known: {', '.join(VARIANTS)}",
            param_hint="--variants",
        )
    # The tables need about 140 columns: wider than a terminal wraps, narrower squeezes.
    console = Console()
    if not console.is_terminal:
        console = Console(width=140)
    wide = Console(width=max(console.width, 140))
    console.print(
        f"[bold]tether demo[/bold]: {threads} threads, driver {driver}, {len(keys)} variants,"
        " the same fault schedule for each" + (" (quick)" if quick else "")
    )
    started = time.monotonic()
    try:
        with open_target(threads=threads, dsn=dsn, admin_dsn=admin_dsn, cap_dsn=cap_dsn) as target:
            console.print(f"server: {target.description}")
            with Progress(
                TextColumn("{task.description:<28}"),
                BarColumn(bar_width=24),
                TextColumn("{task.fields[phase]:<36}"),
                TextColumn("ok {task.fields[ok]:>6}  errors {task.fields[errors]:>5}"),
                TextColumn("{task.fields[stalled]}"),
                TimeElapsedColumn(),
                console=console,
                transient=False,
            ) as progress:
                tasks: dict[str, TaskID] = {
                    k: progress.add_task(
                        VARIANTS[k].title, total=1.0, phase="waiting", ok=0, errors=0, stalled=""
                    )
                    for k in keys
                }

                def update(
                    key: str,
                    phase: str,
                    done: float,
                    planned: float,
                    ok: int,
                    errors: int,
                    stalled: int,
                ) -> None:
                    progress.update(
                        tasks[key],
                        total=max(planned, 0.1),
                        completed=done,
                        phase=phase,
                        ok=ok,
                        errors=errors,
                        stalled=f"[magenta]{stalled} stalled >1s[/magenta]" if stalled else "",
                    )

                result = run_demo(
                    target,
                    threads=threads,
                    quick=quick,
                    driver=driver,
                    variants=keys,
                    progress=update,
                )
    except (DSNError, ValueError, ServerError) as exc:
        raise click.ClickException(str(exc)) from exc
    output.mkdir(parents=True, exist_ok=True)
    try:
        result.chart = timeline(result, output / "timeline.png")
        chart = f"timeline chart: {result.chart.resolve()}"
    except ImportError:
        # The table and the JSON need nothing more; the chart needs matplotlib.
        chart = "timeline chart: not drawn (needs matplotlib: pip install 'tether[demo]')"
    (output / "results.json").write_text(result.to_json() + "\n")
    _print_report(result, wide)
    wide.print(
        f"{chart}\nresults: {(output / 'results.json').resolve()}"
        f"\n(total {time.monotonic() - started:.0f}s)"
    )
    if as_json:
        click.echo(result.to_json())
