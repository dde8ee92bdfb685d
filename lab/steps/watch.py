"""The monitor step: ``lab monitor run`` as a pipeline stage (``lab.monitoring.monitor``)."""

from __future__ import annotations

from lab.pipeline.context import StageContext


def monitor(root, run_dir, *, model: str | None = None, days: int | None = None, end=None,
            fail_on_breach: bool = False) -> dict:
    """Run every monitoring check of ``model`` over ``days`` days ending ``end`` (defaults:
    ``[tool.lab.monitor]``; the newest request in the ledger, else the newest source
    event): ``data/monitor.json`` and ``data/monitor.html``, a ``monitor`` registry run,
    ``monitor.breached`` on a breach. With ``fail_on_breach`` a breach fails the stage."""
    from lab.errors import LabError
    from lab.monitoring.monitor import run_monitor

    with StageContext.open(root, run_dir) as ctx:
        result = run_monitor(ctx.config, ctx.pm, model=model, end=end, days=days)
    if fail_on_breach and result.breaches:
        raise LabError(f"monitoring breached: {', '.join(result.breaches)}; see {result.page_path}")
    return result.to_dict()
