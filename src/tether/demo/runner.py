"""Run the demo: every variant in turn through the same workload and fault schedule, on one
server, each with a fresh ledger, its own fault proxy, and a bounded end."""

from __future__ import annotations

import contextlib
import logging
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator, Sequence
from dataclasses import asdict

from tether.dsn import parse_dsn
from tether.testing import FaultProxy

from .faults import (
    WAIT_TIMEOUT,
    ExternalTarget,
    FaultContext,
    ManagedTarget,
    Phase,
    Target,
    run_fault,
    schedule,
)
from .report import DemoResult, PhaseRecord, VariantRun
from .variants import QUICK_KEYS, VARIANTS, Endpoint, Tables, Variant
from .workload import Workload, audit, create_items, create_ledger, drop_tables

__all__ = ["Progress", "open_target", "run_demo"]

ITEMS_TABLE = "tether_demo_items"
THINK = 0.02  # seconds a thread waits between requests
TX_WORK = 0.005  # application work between a write's two statements

# (variant key, phase title, seconds done, seconds planned, ok, errors, in flight > 1 s)
Progress = Callable[[str, str, float, float, int, int, int], None]


def _endpoint(dsn: str) -> Endpoint:
    d = parse_dsn(dsn)
    if d.options.get("unix_socket"):
        raise ValueError("the demo needs a TCP address (host:port) to put its fault proxy in front")
    if not d.database:
        raise ValueError(f"{d.redacted()}: the DSN must name a database for the demo's tables")
    return Endpoint(d.host, d.port, d.user or "", d.password or "", d.database)


@contextlib.contextmanager
def open_target(
    *,
    threads: int,
    dsn: str | None = None,
    admin_dsn: str | None = None,
    cap_dsn: str | None = None,
) -> Iterator[Target]:
    """The server to run against: a private one (default), or the one ``dsn`` names."""
    target: Target
    if dsn is None:
        managed = ManagedTarget(threads=threads)
        target = managed
        try:
            managed.start()
            yield managed
        finally:
            managed.close()
        return
    external = ExternalTarget(
        _endpoint(dsn),
        admin=_endpoint(admin_dsn) if admin_dsn else None,
        capped=_endpoint(cap_dsn) if cap_dsn else None,
        threads=threads,
    )
    target = external
    try:
        try:
            external.start(create_capped_user=admin_dsn is not None)
        except Exception as exc:
            # Driver errors name the account and host, never the password.
            raise ValueError(f"cannot use {external.app.redacted()}: {exc}") from exc
        yield target
    finally:
        external.close()


def _bounded(fn: Callable[[], object], seconds: float, what: str) -> str | None:
    """Run ``fn`` in a thread for at most ``seconds``; a message if it did not finish."""
    failure: list[str] = []

    def body() -> None:
        try:
            fn()
        except Exception as exc:
            failure.append(f"{what} raised {type(exc).__name__}: {exc}")

    thread = threading.Thread(target=body, name="tether-demo-bounded", daemon=True)
    thread.start()
    thread.join(seconds)
    if thread.is_alive():
        return f"{what} did not return within {seconds:g}s"
    return failure[0] if failure else None


def _slug(key: str) -> str:
    return key.replace("-", "_")


def run_variant(
    target: Target,
    variant_cls: type[Variant],
    phases: Sequence[Phase],
    *,
    threads: int,
    driver: str,
    progress: Progress,
    patience: float = 3.0,
) -> VariantRun:
    """One variant through ``phases``. ``patience``: how long the end of the run waits for
    sessions to go and threads to end before reporting them."""
    run = VariantRun(variant_cls.key, variant_cls.title, variant_cls.description)
    target.ensure_running()
    if isinstance(target, ManagedTarget):
        target.set_wait_timeout(WAIT_TIMEOUT)  # the previous variant's schedule raised it
    # Stragglers of the previous variant must not count against this one.
    target.kill(target.sessions(target.app_users()))
    tables = Tables(
        ITEMS_TABLE,
        f"tether_demo_ledger_{_slug(run.key)}",
        f"tether_demo_counters_{_slug(run.key)}",
    )
    create_ledger(target.app, tables, threads=threads)
    proxy = FaultProxy(target.app.host, target.app.port).start()
    app = target.app
    main_ep = Endpoint(proxy.host, proxy.port, app.user, app.password, app.database)
    capped_ep = (
        Endpoint(proxy.host, proxy.port, target.capped.user, target.capped.password, app.database)
        if target.capped is not None
        else None
    )
    planned = sum(p.seconds for p in phases)
    workload = Workload(threads=threads, think=THINK, tx_work=TX_WORK)
    instances: dict[bool, Variant] = {}

    def instance(capped: bool) -> Variant:
        if capped not in instances:
            ep = capped_ep if capped and capped_ep is not None else main_ep
            instances[capped] = variant_cls(ep, tables, driver=driver)
        return instances[capped]

    def report(title: str) -> None:
        progress(
            run.key,
            title,
            min(workload.now(), planned),
            planned,
            workload.ok,
            workload.errors,
            workload.stalled(1.0),
        )

    try:
        try:
            first = instance(phases[0].capped if phases else False)
        except Exception as exc:
            run.failure = f"{type(exc).__name__}: {exc}"
            return run
        workload.start(first)
        current_capped = phases[0].capped if phases else False
        for index, phase in enumerate(phases):
            if phase.capped != current_capped:
                # Switch users between phases: let the requests in flight finish, then the
                # application replaces its pool as it would after a configuration change.
                still = workload.pause(wait=2.0)
                if still:
                    run.notes.append(f"{still} request(s) in flight at the switch of user")
                old = instances.pop(current_capped)
                try:
                    workload.variant = instance(phase.capped)
                finally:
                    workload.resume()
                message = _bounded(old.close, 10.0, "closing the capped user's instance")
                if message:
                    run.notes.append(message)
                current_capped = phase.capped
            workload.phase = index
            record = PhaseRecord(phase.key, phase.title, phase.short, workload.now(), 0.0)
            run.phases.append(record)
            ctx = FaultContext(
                target, proxy, workload, f"`{app.database}`.{tables.ledger}", record.log.append
            )
            fault = run_fault(phase, ctx)
            end = record.start + phase.seconds
            overrun = end + 90.0  # a fault (a restart) may take longer than planned
            while True:
                now = workload.now()
                busy = fault is not None and fault.is_alive()
                if now >= overrun or (now >= end and not busy):
                    break
                report(phase.title)
                time.sleep(0.1)
            if fault is not None and fault.is_alive():
                record.log.append("the fault had not finished when the phase ended")
            record.end = workload.now()
        report("ending the run")
        run.hung_at_end = workload.freeze(grace=0.5)
        run.elapsed = workload.now()
    finally:
        # Close what the application would close at shutdown, then see what is left on the
        # server; only then cut the network under the requests that are still blocked.
        for variant in instances.values():
            message = _bounded(variant.close, 10.0, f"closing {run.title}")
            if message:
                run.notes.append(message)
        with contextlib.suppress(Exception):
            target.ensure_running()
        report("counting connections left")
        try:
            run.left_open = target.settle(target.app_users(), patience / 2)
            if run.left_open:
                left = Counter(target.describe_sessions(target.app_users()))
                run.notes.append(
                    "left open: " + ", ".join(f"{n} x {what}" for what, n in left.most_common())
                )
        except Exception as exc:
            run.notes.append(f"could not count the sessions left: {exc}")
        proxy.cut_all()
        proxy.close()
        if workload.variant is not None:
            stuck = workload.join(patience)
            run.threads_stuck = len(stuck)
            if stuck:
                places = ", ".join(f"{n} in {w}" for w, n in Counter(stuck).most_common())
                run.notes.append(
                    f"{len(stuck)} worker thread(s) still busy {patience:g}s after the network"
                    " was cut"
                    f" ({places}); left to finish on their own"
                )
        with contextlib.suppress(Exception):
            target.kill(target.sessions(target.app_users()))
    report("checking the ledger")
    run.outcomes = workload.outcomes
    run.audit = audit(target.app, tables, run.outcomes)
    report("done")
    return run


def run_demo(
    target: Target,
    *,
    threads: int = 8,
    quick: bool = False,
    driver: str = "pymysql",
    variants: Sequence[str] | None = None,
    progress: Progress | None = None,
) -> DemoResult:
    """Run the chosen variants (default: all; quick: all but the thread-mapped tether pool)
    through the fault schedule against ``target``."""
    keys = list(variants or (QUICK_KEYS if quick else VARIANTS))
    unknown = [k for k in keys if k not in VARIANTS]
    if unknown:
        raise ValueError(f"unknown variant(s) {', '.join(unknown)}; known: {', '.join(VARIANTS)}")
    report: Progress = progress or (lambda *args: None)
    started = time.monotonic()
    plan = schedule(target, quick=quick, threads=threads)
    active = [p for p in plan if p.skipped is None]
    result = DemoResult(
        target=target.description,
        driver=driver,
        threads=threads,
        quick=quick,
        schedule=[
            {
                k: v
                for k, v in asdict(p).items()
                if k in ("key", "title", "short", "seconds", "what", "skipped")
            }
            for p in plan
        ],
    )
    result.notes.extend(getattr(target, "notes", []))
    for p in plan:
        if p.skipped is not None:
            result.notes.append(f"skipped '{p.title}': {p.skipped}")
    if quick:
        result.notes.append(
            "quick: the blackhole phase ends about 2s after the blackhole starts, before"
            " tether's watchdog (5s) breaks calls stuck behind it; the full run shows what"
            " each variant does after that"
        )
    if isinstance(target, ExternalTarget):
        result.notes.append(
            "--dsn: the demo made tether_demo_* tables in the application's database (dropped"
            " at the end). KILLs ran as "
            + (
                "the --admin-dsn account"
                if target.admin_endpoint.user != target.app.user
                else "the application's own account (it may kill its own sessions); a"
                " privileged --admin-dsn also allows a capped user to be made"
            )
        )
    # tether's and the peers' own loggers would talk over the live display; what they log
    # (watchdog breaks, refused connects, invalidated connections) is what the table counts.
    quiet = {name: logging.getLogger(name) for name in ("tether", "sqlalchemy", "dbutils")}
    levels = {name: lg.level for name, lg in quiet.items()}
    for lg in quiet.values():
        lg.setLevel(logging.CRITICAL + 1)
    created = [ITEMS_TABLE]
    try:
        create_items(target.app, ITEMS_TABLE)
        for key in keys:
            cls = VARIANTS[key]
            created += [f"tether_demo_ledger_{_slug(key)}", f"tether_demo_counters_{_slug(key)}"]
            result.variants.append(
                run_variant(
                    target,
                    cls,
                    active,
                    threads=threads,
                    driver=driver,
                    progress=report,
                    patience=1.0 if quick else 3.0,
                )
            )
    finally:
        for name, lg in quiet.items():
            lg.setLevel(levels[name])
        if isinstance(target, ExternalTarget):
            with contextlib.suppress(Exception):
                drop_tables(target.app, created)
    result.elapsed = time.monotonic() - started
    return result


def describe_variants(keys: Sequence[str]) -> list[tuple[str, str]]:
    return [(VARIANTS[k].title, VARIANTS[k].description) for k in keys]
