"""Which jobs start, on which devices, and which running jobs are preempted: one pure
function of the queue's state, so the rules are tested without processes.

The rules (docs/queue.md states them for users):

1. **Order.** Waiting jobs are considered by priority (higher first), then by job number
   (first submitted first). A preempted job keeps its number, so it goes back to the
   front of its priority.
2. **Gang allocation.** A job starts only when all the devices it asks for are free at
   once; it never holds some while it waits for the rest.
3. **Best fit.** Among the free devices that suit a job, it gets those with the least
   memory that is enough (then the lowest in order), so big devices stay free for jobs
   that need them; CPU slots are all alike and go lowest first.
4. **Packing without starvation.** A job that cannot start holds back the free devices
   it could use: a job after it (lower priority, or the same priority submitted later)
   starts only on devices that job cannot use. Small jobs therefore run side by side on
   whatever nobody ahead of them is waiting for, and a big job's devices, once free, are
   never taken from it by a job behind it. (There is no backfill on time estimates:
   jobs declare none.)
5. **Preemption.** A job that cannot start, where stopping running jobs of *lower*
   priority would free enough devices it can use, stops the fewest such jobs: lowest
   priority first, the most recently started first among equals (the least work
   lost), then any chosen job that turns out not to be needed is spared. Jobs already
   stopping count as freeing their devices, so one waiting job never preempts twice
   for the same devices; equal priority never preempts. Devices being freed for a job
   are held back for it like free ones (rule 4).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Sequence

from lab.queue.model import Device, DeviceRequest


@dataclass(frozen=True)
class Waiting:
    """A queued job as the policy sees it."""

    id: int
    priority: int
    request: DeviceRequest


@dataclass(frozen=True)
class Holding:
    """A running job as the policy sees it: its devices, and whether it is already stopping."""

    id: int
    priority: int
    devices: tuple[str, ...]
    started_at: str = ""
    stopping: bool = False


@dataclass
class Plan:
    """What one scheduling pass decides."""

    start: list[tuple[int, tuple[str, ...]]] = field(default_factory=list)
    """(job id, device ids) to start now, in order."""
    preempt: list[tuple[int, int]] = field(default_factory=list)
    """(running job id, the waiting job id it is stopped for)."""
    reasons: dict[int, str] = field(default_factory=dict)
    """Why each waiting job that does not start waits."""
    never: set[int] = field(default_factory=set)
    """Waiting jobs no set of this queue's devices can ever satisfy."""


def _best_fit(request: DeviceRequest, free: list[Device]) -> tuple[str, ...]:
    ranked = sorted(free, key=lambda d: (d.memory_mb if d.memory_mb is not None else float("inf"), d.order))
    return tuple(d.id for d in sorted(ranked[:request.count], key=lambda d: d.order))


def plan(devices: Sequence[Device], waiting: Sequence[Waiting], running: Sequence[Holding], *,
         preempt: bool = True) -> Plan:
    """One pass of the rules above over the queue's ``devices``, its ``waiting`` jobs and
    its ``running`` ones (each holding its devices until it has ended)."""
    out = Plan()
    held = {dev: job for job in running for dev in job.devices}
    doomed = {job.id for job in running if job.stopping}
    taken: set[str] = set()  # devices promised this pass: to a job started, or held back for one waiting
    suits: dict[DeviceRequest, list[Device]] = {}  # many jobs ask alike: each request's devices, found once
    for job in sorted(waiting, key=lambda j: (-j.priority, j.id)):
        if job.request not in suits:
            suits[job.request] = [d for d in devices if job.request.suits(d)]
        suited = suits[job.request]
        need = job.request.count
        if len(suited) < need:
            out.never.add(job.id)
            out.reasons[job.id] = (f"needs {job.request.describe()}; the queue has {len(suited)} such device(s): "
                                   "cancel it, or add devices")
            continue
        free = [d for d in suited if d.id not in held and d.id not in taken]
        held_back = sum(1 for d in suited if d.id not in held and d.id in taken)
        if len(free) >= need:
            chosen = _best_fit(job.request, free)
            out.start.append((job.id, chosen))
            taken.update(chosen)
            continue
        taken.update(d.id for d in free)
        freeing = [d.id for d in suited if d.id in held and held[d.id].id in doomed and d.id not in taken]
        taken.update(freeing)
        have = len(free) + len(freeing)
        if have >= need:
            stopping = sorted({held[d].id for d in freeing})
            out.reasons[job.id] = f"waiting for job(s) {', '.join(map(str, stopping))} to stop"
            continue
        if preempt:
            victims = _victims(job, suited, held, doomed, taken, need - have, running)
            if victims:
                for victim in victims:
                    out.preempt.append((victim.id, job.id))
                    doomed.add(victim.id)
                    taken.update(d for d in victim.devices if d in {s.id for s in suited})
                out.reasons[job.id] = f"preempting job(s) {', '.join(str(v.id) for v in victims)}"
                continue
        holders = sorted({held[d.id].id for d in suited if d.id in held})
        why = f"waiting for {need - have} more of {job.request.describe()}"
        if holders:
            why += f" (held by job(s) {', '.join(map(str, holders))})"
        if held_back:
            why += f"; {held_back} free but held back for job(s) ahead of it"
        out.reasons[job.id] = why
    return out


def _victims(job: Waiting, suited: list[Device], held: dict[str, Holding], doomed: set[int], taken: set[str],
             short: int, running: Sequence[Holding]) -> list[Holding]:
    """The fewest running jobs of lower priority whose suitable devices (not promised to a
    job ahead) make up ``short`` devices; [] when all of them together would not."""
    suited_ids = {d.id for d in suited}

    def gain(victim: Holding) -> int:
        return sum(1 for d in victim.devices if d in suited_ids and d not in taken)

    candidates = [r for r in running if r.id not in doomed and r.priority < job.priority and gain(r) > 0]
    # lowest priority first; among equals the most recently started (least work lost)
    candidates.sort(key=lambda r: r.started_at, reverse=True)
    candidates.sort(key=lambda r: r.priority)
    chosen: list[Holding] = []
    total = 0
    for victim in candidates:
        chosen.append(victim)
        total += gain(victim)
        if total >= short:
            break
    if total < short:
        return []
    for victim in reversed(list(chosen)):  # spare any victim the others make unnecessary
        if total - gain(victim) >= short:
            chosen.remove(victim)
            total -= gain(victim)
    return chosen
