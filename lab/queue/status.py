"""What ``lab queue devices`` reports: each device, the job holding it, its utilization,
and the **idle reservations**: devices a running job holds while its processes leave
them idle (below ``idle_util_pct``, or a GPU with no process of the job on it) for at
least ``idle_after_s``. Read from the scheduler's latest samples; without a running
scheduler, from the devices found now (and one nvidia-smi sample when there are GPUs).
"""

from __future__ import annotations

import datetime as dt
from typing import Any

from lab.errors import LabError
from lab.queue import devices as devs
from lab.queue.model import ACTIVE, GPU
from lab.queue.store import JobStore, queue_path, scheduler_running
from lab.sqlite import utc_now


def _age_s(since: str | None, now: str) -> float | None:
    if not since:
        return None
    return max((dt.datetime.fromisoformat(now) - dt.datetime.fromisoformat(since)).total_seconds(), 0.0)


def device_report(config, store: JobStore) -> dict[str, Any]:
    """``{"scheduler": {...}, "devices": [...], "idle_reserved": [device ids]}``: one entry
    per device with ``job`` and ``job_name`` (its holder), ``utilization_pct``,
    ``memory_used_mb``, ``job_on_device``, ``idle_for_s`` and ``idle_reserved``."""
    settings = config.queue
    running = scheduler_running(queue_path(config))
    scheduler = store.scheduler()
    now = utc_now()
    rows = store.device_rows() if running else []
    samples_fresh = True
    if not rows:
        found, source = devs.discover(settings)
        rows = [{**d.as_dict(), "ord": d.order} for d in found]
        samples_fresh = False
        if any(d.kind == GPU for d in found) and (program := devs.nvidia_smi()):
            try:
                live = devs.sample_gpus(program)
            except LabError:
                live = {}
            for row, device in zip(rows, found):
                sample = devs.sample_of(device, live) if device.kind == GPU else None
                if sample is not None:
                    row["utilization_pct"], row["memory_used_mb"] = sample.utilization_pct, sample.memory_used_mb
    else:
        source = scheduler["source"] if scheduler else "unknown"
    holders = {d: job for job in store.jobs(ACTIVE) for d in job.devices}
    devices = []
    for row in rows:
        job = holders.get(row["id"])
        idle_for = None
        if samples_fresh and job is not None and row.get("job_id") == job.id:
            idle_for = _age_s(row.get("idle_since"), now)
        on_device = row.get("job_on_device")
        devices.append({
            "id": row["id"], "kind": row["kind"], "name": row.get("name") or "", "cuda": row.get("cuda"),
            "memory_mb": row.get("memory_mb"), "job": job.id if job else None, "job_name": job.name if job else None,
            "job_state": job.state if job else None, "utilization_pct": row.get("utilization_pct"),
            "memory_used_mb": row.get("memory_used_mb"),
            "job_on_device": None if on_device is None or job is None else bool(on_device),
            "sampled_at": row.get("sampled_at") if samples_fresh else None,
            "idle_for_s": None if idle_for is None else round(idle_for, 1),
            "idle_reserved": idle_for is not None and idle_for >= settings.idle_after_s,
        })
    return {
        "scheduler": {"running": running, "pid": scheduler["pid"] if scheduler and running else None,
                      "source": source, "heartbeat_at": scheduler["heartbeat_at"] if scheduler and running else None},
        "devices": devices,
        "idle_reserved": [d["id"] for d in devices if d["idle_reserved"]],
        "idle_after_s": settings.idle_after_s,
        "idle_util_pct": settings.idle_util_pct,
    }
