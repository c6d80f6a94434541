"""``tether demo``: one workload under injected faults, through naive code, the peers and
tether, side by side."""

from .runner import run_demo, timeline_chart
from .workload import VARIANTS, VariantResult

__all__ = ["VARIANTS", "VariantResult", "run_demo", "timeline_chart"]
