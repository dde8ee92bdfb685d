"""The devices a queue schedules on, and how busy they are.

Discovery never imports torch: GPUs come from ``[tool.lab.queue] devices`` when declared,
else from ``nvidia-smi`` when it is on PATH (each GPU, or each MIG instance of a GPU in
MIG mode), plus ``cpu_slots`` CPU slots. Utilization comes from ``nvidia-smi`` for GPUs
(``utilization.gpu``, and which processes use each GPU) and from ``/proc`` for CPU slots
(the CPU time of a job's process group over wall time).
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from dataclasses import dataclass
from typing import Iterable

from lab.errors import ConfigError, LabError
from lab.queue.model import CPU, GPU, Device

NVIDIA_SMI_TIMEOUT_S = 15.0
"""The longest one nvidia-smi call may take before it counts as failed (a hung driver)."""

GPU_QUERY = "index,uuid,name,memory.total,mig.mode.current"
SAMPLE_QUERY = "index,uuid,utilization.gpu,memory.used"
APPS_QUERY = "pid,gpu_uuid,used_memory"

_MIG_LINE = re.compile(r"^\s+MIG\s+(?P<profile>\S+)\s+Device\s+(?P<index>\d+):\s+\(UUID:\s+(?P<uuid>MIG-[^)\s]+)\)")
_GPU_LINE = re.compile(r"^GPU\s+(?P<index>\d+):.*\(UUID:\s+(?P<uuid>GPU-[^)\s]+)\)")
_PROFILE_GB = re.compile(r"\.(?P<gb>\d+)gb", re.IGNORECASE)


# -- discovery ---------------------------------------------------------------------------


def nvidia_smi() -> str | None:
    """The nvidia-smi program on PATH, or None."""
    return shutil.which("nvidia-smi")


def _run_smi(program: str, args: list[str]) -> str:
    try:
        out = subprocess.run([program, *args], capture_output=True, text=True, timeout=NVIDIA_SMI_TIMEOUT_S)
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise LabError(f"nvidia-smi failed ({exc}); fix the driver, or set [tool.lab.queue] discover = false and "
                       "declare the GPUs (devices = [\"gpu:0\", ...])") from None
    if out.returncode != 0:
        message = (out.stderr or out.stdout).strip().splitlines()
        raise LabError(f"nvidia-smi {' '.join(args[:1])} failed (exit {out.returncode}: "
                       f"{message[0] if message else 'no message'}); fix the driver, or set [tool.lab.queue] "
                       "discover = false and declare the GPUs (devices = [\"gpu:0\", ...])")
    return out.stdout


def _number(text: str) -> float | None:
    """A CSV field of nvidia-smi (``nounits``): None for ``[N/A]``, ``[Not Supported]``, ``N/A``."""
    try:
        return float(text.strip())
    except ValueError:
        return None


def parse_gpus(csv_text: str, listing: str = "") -> list[Device]:
    """GPUs from ``nvidia-smi --query-gpu=index,uuid,name,memory.total,mig.mode.current
    --format=csv,noheader,nounits`` and, for GPUs in MIG mode, their MIG instances from
    ``nvidia-smi -L`` (``listing``): a GPU in MIG mode is scheduled as its instances, each
    named ``gpu:<index>.<instance>`` with the memory its profile states (``1g.18gb``)."""
    migs: dict[str, list[tuple[int, str, str]]] = {}
    parent = None
    for line in listing.splitlines():
        if m := _GPU_LINE.match(line):
            parent = m["index"]
        elif (m := _MIG_LINE.match(line)) and parent is not None:
            migs.setdefault(parent, []).append((int(m["index"]), m["profile"], m["uuid"]))
    devices: list[Device] = []
    for row in csv_text.strip().splitlines():
        fields = [f.strip() for f in row.split(",")]
        if len(fields) < 4 or not fields[0].isdigit():
            continue
        index, uuid, name, memory = fields[0], fields[1], fields[2], _number(fields[3])
        mig_mode = fields[4].lower() if len(fields) > 4 else ""
        if mig_mode == "enabled" and migs.get(index):
            for instance, profile, mig_uuid in sorted(migs[index]):
                gb = _PROFILE_GB.search(profile)
                devices.append(Device(id=f"gpu:{index}.{instance}", kind=GPU, cuda=mig_uuid,
                                      name=f"{name} MIG {profile}", memory_mb=int(gb["gb"]) * 1024 if gb else None,
                                      order=len(devices)))
            continue
        devices.append(Device(id=f"gpu:{index}", kind=GPU, cuda=uuid if uuid.startswith("GPU-") else index,
                              name=name, memory_mb=int(memory) if memory is not None else None, order=len(devices)))
    return devices


def discover_gpus(program: str) -> list[Device]:
    """The GPUs (or MIG instances) nvidia-smi lists; a failing nvidia-smi is a LabError."""
    csv_text = _run_smi(program, [f"--query-gpu={GPU_QUERY}", "--format=csv,noheader,nounits"])
    listing = _run_smi(program, ["-L"]) if "enabled" in csv_text.lower() else ""
    return parse_gpus(csv_text, listing)


def declared_gpus(entries: Iterable) -> list[Device]:
    """GPUs from ``[tool.lab.queue] devices``: ``"gpu:0"`` (CUDA index 0), ``"gpu:GPU-<uuid>"``
    or ``"gpu:MIG-<uuid>"`` (that UUID), or a table ``{id, cuda, memory_mb, name}``."""
    devices: list[Device] = []
    for entry in entries:
        table = dict(entry) if isinstance(entry, dict) else {"id": entry}
        unknown = set(table) - {"id", "cuda", "memory_mb", "name"}
        if unknown:
            raise ConfigError(f"[tool.lab.queue] devices entry {entry!r} has unknown key(s) "
                              f"{', '.join(sorted(unknown))}; known: id, cuda, memory_mb, name")
        ident = table.get("id")
        if not isinstance(ident, str) or not ident.startswith("gpu:") or len(ident) <= 4:
            raise ConfigError(f"[tool.lab.queue] devices entry {entry!r} needs an id \"gpu:<index or UUID>\" "
                              "(CPU slots are counted by cpu_slots, not declared)")
        cuda = table.get("cuda", ident[4:])
        memory = table.get("memory_mb")
        if memory is not None and (isinstance(memory, bool) or not isinstance(memory, int) or memory <= 0):
            raise ConfigError(f"[tool.lab.queue] devices entry {entry!r}: memory_mb must be a whole number of MiB")
        if any(d.id == ident for d in devices):
            raise ConfigError(f"[tool.lab.queue] devices declares {ident} twice")
        devices.append(Device(id=ident, kind=GPU, cuda=str(cuda), name=str(table.get("name", "")),
                              memory_mb=memory, order=len(devices)))
    return devices


def cpu_slots(n: int, start: int = 0) -> list[Device]:
    return [Device(id=f"cpu:{i}", kind=CPU, name="CPU slot", order=start + i) for i in range(n)]


def discover(queue_config) -> tuple[list[Device], str]:
    """The queue's devices and where the GPUs came from (``declared``, ``nvidia-smi``,
    ``none``): declared ones win, else nvidia-smi when ``discover`` is on and it is on
    PATH; the CPU slots follow the GPUs."""
    if queue_config.devices:
        gpus, source = declared_gpus(queue_config.devices), "declared"
    elif queue_config.discover and (program := nvidia_smi()):
        gpus, source = discover_gpus(program), "nvidia-smi"
    else:
        gpus, source = [], "none"
    return gpus + cpu_slots(queue_config.cpu_slots, start=len(gpus)), source


# -- utilization -------------------------------------------------------------------------


@dataclass(frozen=True)
class GpuSample:
    """One GPU's state at a sample: utilization in percent (None when nvidia-smi does not
    report it, as for MIG), memory used in MiB, and the processes using it."""

    utilization_pct: float | None
    memory_used_mb: float | None
    pids: frozenset[int]


def parse_gpu_samples(csv_text: str, apps_text: str) -> dict[str, GpuSample]:
    """Per GPU, keyed by its UUID and by its index, from ``--query-gpu=index,uuid,
    utilization.gpu,memory.used`` and ``--query-compute-apps=pid,gpu_uuid,used_memory``
    (both ``csv,noheader,nounits``). Processes on a MIG instance are listed under the
    parent GPU's UUID."""
    pids: dict[str, set[int]] = {}
    for row in apps_text.strip().splitlines():
        fields = [f.strip() for f in row.split(",")]
        if len(fields) >= 2 and fields[0].isdigit():
            pids.setdefault(fields[1], set()).add(int(fields[0]))
    out = {}
    for row in csv_text.strip().splitlines():
        fields = [f.strip() for f in row.split(",")]
        if len(fields) >= 4 and fields[0].isdigit() and fields[1].startswith("GPU-"):
            sample = GpuSample(_number(fields[2]), _number(fields[3]), frozenset(pids.get(fields[1], ())))
            out[fields[1]] = out[fields[0]] = sample
    return out


def sample_gpus(program: str) -> dict[str, GpuSample]:
    """Every GPU's utilization and processes now (one call each; about 50 ms on a GPU host)."""
    return parse_gpu_samples(
        _run_smi(program, [f"--query-gpu={SAMPLE_QUERY}", "--format=csv,noheader,nounits"]),
        _run_smi(program, [f"--query-compute-apps={APPS_QUERY}", "--format=csv,noheader,nounits"]))


def sample_of(device: Device, samples: dict[str, GpuSample]) -> GpuSample | None:
    """``device``'s sample: its GPU's (a MIG instance: its parent GPU's processes, no
    utilization); None when nvidia-smi does not list it."""
    parent = device.id[4:].split(".")[0]
    if "." in device.id[4:]:
        sample = samples.get(parent)
        return GpuSample(None, None, sample.pids) if sample else None
    return samples.get(device.cuda or "") or samples.get(parent)


_TICKS = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100


def _stat_fields(pid: int | str) -> list[str] | None:
    try:
        with open(f"/proc/{pid}/stat", "rb") as fh:
            text = fh.read().decode(errors="replace")
    except OSError:
        return None
    # the command name (field 2) may hold spaces and parentheses: split after the last ')'
    return text[text.rfind(")") + 2:].split()


def process_start(pid: int) -> str | None:
    """When process ``pid`` started, in clock ticks since boot (``/proc/PID/stat`` field 22),
    as text; None when it does not exist or /proc is not there. A pid and its start time
    name one process: a pid the system reused has another start time."""
    fields = _stat_fields(pid)
    if not fields or len(fields) <= 19 or fields[0] in ("Z", "X"):  # a zombie has ended; only its entry is left
        return None
    return fields[19]


def same_process(pid: int | None, start: str | None) -> bool:
    """Whether ``pid`` is still the process that started at ``start`` (``process_start``).
    A process the queue cannot identify (no recorded start, no /proc) is never taken for
    its job, so it is never signalled."""
    if not pid or start is None:
        return False
    return process_start(pid) == start


def group_members(pgids: Iterable[int]) -> tuple[dict[int, set[int]], dict[int, float]]:
    """For each process group in ``pgids``: its live processes and their CPU seconds
    (user + system, the group leader's reaped children included), from one walk of /proc."""
    wanted = set(pgids)
    members: dict[int, set[int]] = {g: set() for g in wanted}
    cpu: dict[int, float] = {g: 0.0 for g in wanted}
    if not wanted:
        return members, cpu
    try:
        entries = os.listdir("/proc")
    except OSError:
        return members, cpu
    for entry in entries:
        if not entry.isdigit():
            continue
        fields = _stat_fields(entry)
        if not fields or len(fields) < 15:
            continue
        pgid = int(fields[2])
        if pgid not in wanted:
            continue
        pid = int(entry)
        members[pgid].add(pid)
        ticks = int(fields[11]) + int(fields[12])  # utime, stime
        if pid == pgid:
            ticks += int(fields[13]) + int(fields[14])  # cutime, cstime: children it has waited for
        cpu[pgid] += ticks / _TICKS
    return members, cpu
