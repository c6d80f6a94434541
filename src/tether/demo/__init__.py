"""``tether demo``: one workload under injected faults (idle past ``wait_timeout``, killed
sessions, a restart, a connection cap, sessions killed inside transactions, a blackhole),
through naive code, the peers and tether, side by side.

``make demo`` or ``tether demo`` runs it against a private throwaway MariaDB; see
:func:`run_demo` to run it from Python.
"""

from .faults import ExternalTarget, ManagedTarget, Phase, Target, schedule
from .report import DemoResult, VariantRun, phase_table, results_table, timeline
from .runner import open_target, run_demo
from .variants import DEFAULT_KEYS, QUICK_KEYS, VARIANTS, Variant

__all__ = [
    "DEFAULT_KEYS",
    "QUICK_KEYS",
    "VARIANTS",
    "DemoResult",
    "ExternalTarget",
    "ManagedTarget",
    "Phase",
    "Target",
    "Variant",
    "VariantRun",
    "open_target",
    "phase_table",
    "results_table",
    "run_demo",
    "schedule",
    "timeline",
]
