"""A local job queue for accelerators: ``lab queue`` (docs/queue.md).

Jobs (any command, ``lab run train`` or a script) ask for devices and a priority and are
stored in the lab's SQLite queue file; one scheduler (``lab queue run``) starts them on
their devices all at once (gang allocation), packs small jobs, preempts lower-priority
jobs through SIGTERM (a job ending with ``PREEMPTED_EXIT_STATUS`` goes back to the queue
and resumes later), and reports devices held idle. Devices are the GPUs nvidia-smi lists
(or those declared in ``[tool.lab.queue]``) and CPU slots, so it runs on CPU-only machines.
"""

from lab.queue.model import (
    PREEMPTED_EXIT_STATUS, Device, DeviceRequest, Job, Outcome, outcome, request_for,
)
from lab.queue.policy import Holding, Plan, Waiting, plan
from lab.queue.store import JobStore, queue_path

__all__ = [
    "PREEMPTED_EXIT_STATUS", "Device", "DeviceRequest", "Holding", "Job", "JobStore", "Outcome", "Plan", "Waiting",
    "outcome", "plan", "queue_path", "request_for",
]
