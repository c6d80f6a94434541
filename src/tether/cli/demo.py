"""``tether demo``: faults survived, side by side."""

from __future__ import annotations

import json
from pathlib import Path

import click
from rich.console import Console
from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from ..demo import VARIANTS, VariantResult, run_demo, timeline_chart


def results_table(results: list[VariantResult]) -> Table:
    table = Table(title="Same workload, same faults", title_justify="left")
    for column, justify in (
        ("variant", "left"),
        ("ok", "right"),
        ("errors", "right"),
        ("longest stall", "right"),
        ("hung at end", "right"),
        ("lost writes", "right"),
        ("dup", "right"),
        ("half", "right"),
        ("failed yet written", "right"),
        ("left open", "right"),
    ):
        table.add_column(column, justify=justify)  # type: ignore[arg-type]
    for r in results:
        table.add_row(
            r.name,
            str(r.requests),
            str(r.errors),
            f"{r.longest_stall:.1f}s",
            str(len(r.stuck)),
            str(r.lost),
            str(r.duplicated),
            str(r.half_committed),
            str(r.unexpected),
            str(r.left_open),
        )
    return table


@click.command()
@click.option("--quick", is_flag=True, help="A short version (about a minute).")
@click.option("--threads", type=click.IntRange(min=1, max=64), default=8, show_default=True)
@click.option(
    "--output",
    type=click.Path(file_okay=False, path_type=Path),
    default=Path("demo-output"),
    show_default=True,
    help="Where the timeline chart and results go.",
)
@click.option("--json", "as_json", is_flag=True, help="Print the results as JSON too.")
def demo(quick: bool, threads: int, output: Path, as_json: bool) -> None:
    """Inject faults into one workload run by naive code, the peers and tether.

    Starts a throwaway MariaDB (wait_timeout=2) behind a fault proxy, then runs each variant
    through: idle past wait_timeout, sessions killed, a server restart, a connection cap below
    the thread count, a blackhole, and sessions killed inside transactions.
    """
    # Wide enough for the table even when the output is not a terminal.
    console = Console(width=max(Console().width, 130))
    console.print(
        f"[bold]tether demo[/bold]: {threads} threads of reads and two-statement transactions,"
        f" {len(VARIANTS)} variants, the same fault schedule for each"
        + (" (quick)" if quick else "")
    )
    with Progress(
        TextColumn("{task.description:<24}"),
        BarColumn(),
        TextColumn("{task.fields[phase]}"),
        TimeElapsedColumn(),
        console=console,
    ) as progress:
        tasks = {v.name: progress.add_task(v.name, total=1.0, phase="waiting") for v in VARIANTS}

        def update(variant: str, phase: str, fraction: float) -> None:
            progress.update(tasks[variant], completed=min(1.0, fraction), phase=phase)

        results = run_demo(threads=threads, quick=quick, progress=update)
    console.print(results_table(results))
    console.print(
        "ok: requests that worked; errors: exceptions that reached the application;"
        " lost writes: transactions the app saw commit that are not in the ledger; dup:"
        " ledger rows written twice; half: transactions partly applied; failed yet written:"
        " writes the app saw fail (not 'outcome unknown') that did happen; left open:"
        " server connections after the variant closed its pool."
    )
    for r in results:
        kinds = ", ".join(f"{k} x{n}" for k, n in sorted(r.errors_by_kind().items()))
        console.print(f"  {r.name}: {r.description}" + (f"; errors: {kinds}" if kinds else ""))
    chart = timeline_chart(results, output / "timeline.png")
    (output / "results.json").write_text(json.dumps([r.as_dict() for r in results], indent=2))
    console.print(f"timeline: {chart}")
    if as_json:
        click.echo(json.dumps([r.as_dict() for r in results], indent=2))
