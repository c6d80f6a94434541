"""The demo's results: what each variant did under the faults, as a table, a timeline chart
and JSON."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from rich.table import Table

from .workload import Audit, Outcome, phase_stats

__all__ = ["DemoResult", "PhaseRecord", "VariantRun", "phase_table", "results_table", "timeline"]


@dataclass
class PhaseRecord:
    key: str
    title: str
    short: str  # for the chart
    start: float  # seconds since the variant's run started
    end: float
    log: list[str] = field(default_factory=list)


@dataclass
class VariantRun:
    key: str
    title: str
    description: str
    outcomes: list[Outcome] = field(default_factory=list)
    phases: list[PhaseRecord] = field(default_factory=list)
    audit: Audit = field(default_factory=Audit)
    left_open: int = 0  # sessions of the application users after the variant closed
    hung_at_end: int = 0
    threads_stuck: int = 0  # workers still blocked after the network was cut under them
    elapsed: float = 0.0
    failure: str | None = None  # the variant could not run at all
    notes: list[str] = field(default_factory=list)

    @property
    def requests(self) -> int:
        return sum(1 for o in self.outcomes if o.error is None)

    @property
    def errors(self) -> int:
        return sum(1 for o in self.outcomes if o.error is not None and o.verdict != "hung")

    @property
    def in_doubt(self) -> int:
        return sum(1 for o in self.outcomes if o.verdict == "unknown")

    @property
    def longest_stall(self) -> float:
        return max((o.latency for o in self.outcomes), default=0.0)

    def errors_by_kind(self) -> dict[str, int]:
        kinds: dict[str, int] = {}
        for o in self.outcomes:
            if o.error is not None and o.verdict != "hung":
                kinds[o.error] = kinds.get(o.error, 0) + 1
        return dict(sorted(kinds.items(), key=lambda kv: (-kv[1], kv[0])))

    def as_dict(self) -> dict[str, Any]:
        a = self.audit
        per_phase = phase_stats(self.outcomes, len(self.phases))
        return {
            "variant": self.key,
            "title": self.title,
            "description": self.description,
            "requests": self.requests,
            "errors": self.errors,
            "errors_by_kind": self.errors_by_kind(),
            "outcome_unknown": self.in_doubt,
            "hung_at_end": self.hung_at_end,
            "longest_stall_s": round(self.longest_stall, 2),
            "writes_committed": a.committed,
            "writes_lost_silently": a.lost,
            "writes_duplicated": a.duplicated,
            "half_committed": a.half_committed,
            "failed_but_written": a.failed_but_written,
            "in_doubt_written": a.unknown_written,
            "in_doubt_not_written": a.unknown_not_written,
            "connections_left_open": self.left_open,
            "threads_stuck_after_cut": self.threads_stuck,
            "elapsed_s": round(self.elapsed, 1),
            "failure": self.failure,
            "notes": self.notes,
            "phases": [
                {
                    "phase": p.key,
                    "title": p.title,
                    "start_s": round(p.start, 2),
                    "end_s": round(p.end, 2),
                    "requests": s.requests,
                    "errors": s.errors,
                    "hung": s.hung,
                    "longest_stall_s": round(s.longest_stall, 2),
                    "errors_by_kind": s.kinds,
                    "log": p.log,
                }
                for p, s in zip(self.phases, per_phase, strict=True)
            ],
        }


@dataclass
class DemoResult:
    target: str
    driver: str
    threads: int
    quick: bool
    schedule: list[dict[str, Any]]  # planned phases: key, title, seconds, what, skipped
    variants: list[VariantRun] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    elapsed: float = 0.0
    chart: Path | None = None

    def as_dict(self) -> dict[str, Any]:
        return {
            "target": self.target,
            "driver": self.driver,
            "threads": self.threads,
            "quick": self.quick,
            "elapsed_s": round(self.elapsed, 1),
            "schedule": self.schedule,
            "notes": self.notes,
            "chart": str(self.chart) if self.chart else None,
            "variants": [v.as_dict() for v in self.variants],
        }

    def to_json(self) -> str:
        return json.dumps(self.as_dict(), indent=2)


# ----------------------------------------------------------------------------- tables


def _count(n: int, *, bad: bool = True) -> str:
    if n == 0:
        return "0"
    return f"[bold red]{n}[/bold red]" if bad else f"[yellow]{n}[/yellow]"


def results_table(result: DemoResult) -> Table:
    table = Table(
        title="Same workload, same faults",
        title_justify="left",
        caption=(
            "errors surfaced: exceptions that reached the application (visible, handleable);"
            " in doubt: tether.OutcomeUnknown among them; hung: requests still blocked when"
            " the run ended (counted in the longest stall, not in the errors). Lost silently:"
            " the application was told 'committed' and the row is not there. Failed, yet"
            " written: told 'failed', the row is there. Conns left open: the application's"
            " sessions still on the server after it closed its pool (those of hung requests"
            " included)."
        ),
        caption_justify="left",
    )
    for header, justify in (
        ("variant", "left"),
        ("requests\nok", "right"),
        ("errors\nsurfaced", "right"),
        ("of them\nin doubt", "right"),
        ("hung\nat end", "right"),
        ("longest\nstall", "right"),
        ("writes lost\nsilently", "right"),
        ("dupli-\ncated", "right"),
        ("half-\ncommitted", "right"),
        ("failed, yet\nwritten", "right"),
        ("conns left\nopen", "right"),
    ):
        table.add_column(
            header,
            justify=justify,  # type: ignore[arg-type]
            no_wrap=header == "variant",
        )
    for v in result.variants:
        if v.failure is not None:
            table.add_row(v.title, f"[red]did not run: {v.failure}[/red]", *([""] * 9))
            continue
        a = v.audit
        table.add_row(
            v.title,
            str(v.requests),
            _count(v.errors, bad=False),
            str(v.in_doubt),
            _count(v.hung_at_end),
            f"{v.longest_stall:.1f}s",
            _count(a.lost),
            _count(a.duplicated),
            _count(a.half_committed),
            _count(a.failed_but_written),
            _count(v.left_open),
        )
    return table


def phase_table(result: DemoResult) -> Table:
    """Errors (and hangs) per variant and phase, with the longest stall in each."""
    titles: list[str] = []
    for v in result.variants:
        for p in v.phases:
            if p.title not in titles:
                titles.append(p.title)
    table = Table(
        title="Errors surfaced per phase (longest stall)", title_justify="left", show_lines=False
    )
    table.add_column("variant", no_wrap=True)
    for title in titles:
        table.add_column(title, justify="right")
    for v in result.variants:
        if v.failure is not None:
            continue
        stats = dict(
            zip((p.title for p in v.phases), phase_stats(v.outcomes, len(v.phases)), strict=True)
        )
        cells = []
        for title in titles:
            s = stats.get(title)
            if s is None:
                cells.append("-")
                continue
            text = f"{s.errors}" + (f" +{s.hung} hung" if s.hung else "")
            cells.append(f"{text} ({s.longest_stall:.1f}s)")
        table.add_row(v.title, *cells)
    return table


# ----------------------------------------------------------------------------- chart


def _series(v: VariantRun, bins: int, bin_s: float) -> tuple[list[float], list[float]]:
    """Errors and completed requests per second, by when the application heard back."""
    errors = [0.0] * bins
    done = [0.0] * bins
    for o in v.outcomes:
        b = min(bins - 1, max(0, int(o.end / bin_s)))
        if o.error is None:
            done[b] += 1 / bin_s
        elif o.verdict != "hung":
            errors[b] += 1 / bin_s
    return errors, done


def timeline(result: DemoResult, path: Path) -> Path:
    """One row per variant: errors per second over the run (red), requests completed per
    second (grey), fault phases shaded, requests hung until the end (purple). The scales are
    the same on every row, so rows compare at a glance."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    runs = [v for v in result.variants if v.failure is None]
    rows = max(1, len(runs))
    fig, axes_grid = plt.subplots(
        rows, 1, figsize=(12, 1.9 * rows + 1.2), sharex=True, squeeze=False
    )
    axes = [row[0] for row in axes_grid]
    shades = ["#f4f4f4", "#e3ecf7"]
    horizon = max((v.elapsed for v in runs), default=1.0)
    bin_s = 0.5
    bins = int(horizon / bin_s) + 2
    xs = [i * bin_s for i in range(bins)]
    series = [_series(v, bins, bin_s) for v in runs]
    top_errors = max((max(e) for e, _ in series), default=0.0) * 1.3 + 1.0  # room for labels
    top_done = max((max(d) for _, d in series), default=0.0) * 1.05 + 1.0
    for ax, v, (errors, done) in zip(axes, runs, series, strict=False):
        # The twin axis (requests done) lies under the errors axis: shade the phases on it,
        # so nothing covers the grey throughput.
        twin = ax.twinx()
        ax.set_zorder(twin.get_zorder() + 1)
        ax.patch.set_visible(False)
        for i, p in enumerate(v.phases):
            twin.axvspan(p.start, p.end, color=shades[i % 2], zorder=0, lw=0)
            ax.text(
                (p.start + p.end) / 2,
                0.97,
                p.short,
                transform=ax.get_xaxis_transform(),
                ha="center",
                va="top",
                fontsize=6.5,
                color="#555555",
            )
        twin.fill_between(xs, done, step="post", color="#9a9a9a", alpha=0.35, lw=0, zorder=1)
        twin.set_ylim(0, top_done)
        twin.set_ylabel("ok/s", fontsize=7, color="#777777")
        twin.tick_params(labelsize=7, colors="#777777")
        ax.step(xs, errors, where="post", color="#c0392b", lw=1.4, zorder=3)
        ax.set_ylabel("errors/s", fontsize=8)
        ax.tick_params(labelsize=7)
        ax.set_ylim(0, top_errors)
        hung = [o for o in v.outcomes if o.verdict == "hung"]
        if hung:
            first = min(o.start for o in hung)
            end = max(o.end for o in hung)
            ax.axvspan(first, end, ymin=0.0, ymax=0.12, color="#8e44ad", alpha=0.45, lw=0, zorder=4)
            ax.text(
                end,
                0.14,
                f"{len(hung)} hung until the end ",
                transform=ax.get_xaxis_transform(),
                ha="right",
                va="bottom",
                fontsize=7,
                color="#6c3483",
            )
        a = v.audit
        ax.set_title(
            f"{v.title}: {v.requests} ok, {v.errors} errors surfaced, {v.hung_at_end} hung at"
            f" end, longest stall {v.longest_stall:.1f}s, {a.lost} writes lost silently,"
            f" {a.duplicated} duplicated, {v.left_open} connections left open",
            fontsize=8,
            loc="left",
        )
    axes[-1].set_xlabel(
        "seconds into the variant's run (shaded: fault phases; red: errors per second; grey:"
        " requests completed per second; purple: requests hung until the end)",
        fontsize=8,
    )
    fig.suptitle(
        f"tether demo: {result.threads} threads, driver {result.driver}"
        + (" (quick)" if result.quick else ""),
        fontsize=10,
        x=0.01,
        ha="left",
    )
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
