"""Run the demo: every variant through the same workload and fault schedule, one after the
other, on one throwaway server behind a fault proxy; then the side-by-side table and the
timeline chart."""

from __future__ import annotations

import contextlib
import logging
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from tether.testing import FaultProxy, MariaDBServer

from .workload import (
    VARIANTS,
    Run,
    VariantResult,
    Workload,
    audit,
    reset_server,
    schedule,
)

Progress = Callable[[str, str, float], None]  # (variant, phase, fraction done)


def run_variant(
    variant_cls: Any,
    server: MariaDBServer,
    proxy: FaultProxy,
    *,
    threads: int,
    quick: bool,
    progress: Progress,
) -> VariantResult:
    reset_server(server)
    proxy.pass_through()
    proxy.cut_all()
    dsn = {
        "host": proxy.host,
        "port": proxy.port,
        "user": server.user,
        "password": server.password,
        "database": server.database,
    }
    result = VariantResult(variant_cls.name, variant_cls.description)
    variant = variant_cls(dsn)
    workload = Workload(variant, threads, result)
    run = Run(server, proxy, workload)
    phases = schedule(quick)
    total = sum(p.seconds for p in phases)
    done = 0.0
    workload.begin()
    try:
        for phase in phases:
            start = time.monotonic() - workload.start
            progress(variant_cls.name, phase.name, done / total)
            phase_end = time.monotonic() + phase.seconds
            if phase.action is not None:
                if phase.at:
                    time.sleep(phase.at)
                with contextlib.suppress(Exception):
                    phase.action(run)
            while time.monotonic() < phase_end:
                time.sleep(0.05)
                elapsed = phase.seconds - (phase_end - time.monotonic())
                progress(variant_cls.name, phase.name, (done + elapsed) / total)
            done += phase.seconds
            result.phases.append((phase.name, start, time.monotonic() - workload.start))
            # Undo what the phase changed on the server for the next one.
            server.execute_admin(f"ALTER USER '{server.user}'@'%' WITH MAX_USER_CONNECTIONS 0")
            proxy.pass_through()
    finally:
        workload.finish(grace=3.0)
        result.elapsed = time.monotonic() - workload.start
        with contextlib.suppress(Exception):
            variant.close()
    progress(variant_cls.name, "checking the ledger", 1.0)
    time.sleep(0.5)
    audit(server, result)
    result.left_open = server.connections_of()
    return result


def run_demo(
    *,
    dsn_server: MariaDBServer | None = None,
    threads: int = 8,
    quick: bool = False,
    variants: list[Any] | None = None,
    progress: Progress | None = None,
) -> list[VariantResult]:
    """Run every variant. Starts its own throwaway server unless one is given."""
    chosen = variants or VARIANTS
    report = progress or (lambda v, p, f: None)
    # The peers' own loggers and tether's would talk over the live display: the errors they
    # log are what the table counts.
    for name in ("tether", "sqlalchemy", "dbutils"):
        logging.getLogger(name).setLevel(logging.CRITICAL + 1)
    own = dsn_server is None
    server = dsn_server or MariaDBServer(options={"wait_timeout": 2}, name="demo")
    if own:
        server.start()
    proxy = FaultProxy(server.host, server.port).start()
    results = []
    try:
        for variant_cls in chosen:
            results.append(
                run_variant(
                    variant_cls, server, proxy, threads=threads, quick=quick, progress=report
                )
            )
    finally:
        proxy.close()
        if own:
            server.stop()
    return results


def timeline_chart(results: list[VariantResult], path: Path) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(len(results), 1, figsize=(11, 1.7 * len(results) + 1), sharex=True)
    if len(results) == 1:
        axes = [axes]
    shades = ["#f2f2f2", "#dde8f5"]
    for ax, result in zip(axes, results, strict=True):
        for i, (name, start, end) in enumerate(result.phases):
            ax.axvspan(start, end, color=shades[i % 2], zorder=0)
            if ax is axes[0]:
                ax.text(
                    (start + end) / 2,
                    1.02,
                    name,
                    transform=ax.get_xaxis_transform(),
                    ha="center",
                    va="bottom",
                    fontsize=7,
                    rotation=20,
                )
        horizon = int(result.elapsed) + 1
        per_second = [0] * horizon
        for o in result.outcomes:
            if o.error is not None and int(o.t) < horizon:
                per_second[int(o.t)] += 1
        ax.step(range(horizon), per_second, where="post", color="#c0392b", zorder=2)
        ax.set_ylabel("errors/s", fontsize=8)
        ax.set_title(
            f"{result.name}: {result.errors} errors, {result.lost} writes lost,"
            f" longest stall {result.longest_stall:.1f}s",
            fontsize=9,
            loc="left",
        )
    axes[-1].set_xlabel("seconds into the run (shaded: fault phases)")
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
