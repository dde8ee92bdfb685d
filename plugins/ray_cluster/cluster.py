"""Ray itself: imported only here and only when a lab with ``[tool.lab.ray]`` needs it, the
connection (one per process), and what the cluster's nodes can give a task."""

from __future__ import annotations

import os
import signal
import socket
import threading
from typing import Any

from lab.errors import ConfigError, LabError

from plugins.ray_cluster.settings import Resources, RaySettings

RAY_VERSION = "2.60.0"
INSTALL_HINT = (f"pip install 'ray[default]=={RAY_VERSION}' (or pip install 'lab[ray]'), or remove the "
                "[tool.lab.ray] table to run stages on the local kernel")
# Variables a stage's kernel or a sweep worker reads (lab.pipeline's code record and progress
# file, the preemption marker, LAB_HOME, ...) all start so; LAB_RUN_PID is the exception:
# the task sets it to the Ray worker's own pid (the kernel's parent), see tasks.py.
ENV_PREFIX = "LAB_"
LOCAL_ONLY_ENV = ("LAB_RUN_PID", "LAB_SWEEP_PARENT_PID")
LOOPBACK_ENV = "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"
"""Set to "0" (before Ray is imported) for a Ray on 127.0.0.1: Ray then keeps to loopback."""


def import_ray() -> Any:
    """The ``ray`` module; a ConfigError naming the install when it is missing."""
    try:
        import ray  # Ray loads only for a lab that asks for it: the core and other plugins never import it
    except ImportError:
        raise ConfigError(f"this lab has a [tool.lab.ray] table but Ray is not installed: {INSTALL_HINT}") from None
    return ray


def connect(settings: RaySettings) -> Any:
    """``ray``, connected: a process already connected keeps its connection; otherwise
    ``ray.init`` at ``settings.address`` (``"local"`` starts a throwaway Ray bound to
    127.0.0.1 without the dashboard). A cluster that cannot be reached is a LabError."""
    host_port = _host_port(settings.address)
    if settings.address == "local" or (host_port and _is_loopback(host_port[0])):
        # Read when Ray is imported: without it Ray rewrites 127.0.0.1 to this machine's
        # network address, which a Ray bound to loopback does not listen on.
        os.environ.setdefault(LOOPBACK_ENV, "0")
    ray = import_ray()
    if ray.is_initialized():
        return ray
    if host_port:
        _check_reachable(settings.address, *host_port)
    kwargs: dict[str, Any] = {"log_to_driver": settings.log_to_driver, "namespace": "lab"}
    if settings.address == "local":
        kwargs.update(address="local", include_dashboard=False, _node_ip_address="127.0.0.1")
        if settings.local_num_cpus:
            kwargs["num_cpus"] = settings.local_num_cpus
    else:
        kwargs["address"] = settings.address
    # ray.init makes SIGTERM a plain sys.exit in the main thread; keep the handler that was
    # there (lab run's relay to its stage, which this executor extends: executor._Stop).
    main = threading.current_thread() is threading.main_thread()
    previous = signal.getsignal(signal.SIGTERM) if main else None
    try:
        ray.init(**kwargs)
    except (ConnectionError, TimeoutError, RuntimeError, ValueError) as exc:
        first = (str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__).rstrip(".")
        auth = ("" if os.environ.get("RAY_AUTH_MODE") or not host_port else
                " A cluster with token authentication (Ray's default) needs RAY_AUTH_MODE=token in this "
                "environment when its address is named, and its token (`ray get-auth-token` on the head) in "
                "~/.ray/auth_token or RAY_AUTH_TOKEN.")
        raise LabError(f"cannot connect to the Ray cluster at [tool.lab.ray] address = {settings.address!r}: "
                       f"{first}. Start one (`ray start --head` on this machine, then address = \"auto\"), "
                       "name the head node (address = \"HOST:6379\"), or use address = \"local\"." + auth) from None
    finally:
        if main and previous is not None:
            signal.signal(signal.SIGTERM, previous)
    return ray


def _host_port(address: str) -> tuple[str, int] | None:
    """``("HOST", PORT)`` of a ``HOST:PORT`` address; None for "auto", "local", "ray://..."."""
    host, sep, port = address.strip().rpartition(":")
    if not sep or not port.isdigit() or "/" in address:
        return None
    return host.strip("[]"), int(port)


def _is_loopback(host: str) -> bool:
    return host in ("localhost", "::1") or host.startswith("127.")


def _check_reachable(address: str, host: str, port: int, timeout_s: float = 5.0) -> None:
    """A LabError at once when nothing listens at the head's address (``ray.init`` would
    retry for minutes)."""
    try:
        socket.create_connection((host, port), timeout=timeout_s).close()
    except OSError as exc:
        raise LabError(f"cannot connect to the Ray cluster at [tool.lab.ray] address = {address!r}: {exc}. Is "
                       "its head running (`ray start --head --port PORT`)? Check the host and port, and that "
                       "this machine can reach them") from None


# Ray's own resource names (and its per-node "node:<ip>" ones), not a lab's custom resources.
_BUILT_IN = ("CPU", "GPU", "memory", "object_store_memory")


def nodes(ray: Any) -> list[dict[str, Any]]:
    """The cluster's live nodes: ``{"id", "host", "address", "cpus", "gpus", "memory_gb",
    "custom"}`` (``custom``: the node's own resources, ``ray start --resources``)."""
    found = []
    for node in ray.nodes():
        if not node.get("Alive"):
            continue
        res = node.get("Resources", {})
        custom = {k: v for k, v in res.items() if k not in _BUILT_IN and not k.startswith("node:")
                  and not k.startswith("accelerator_type:")}
        found.append({"id": node.get("NodeID"), "host": node.get("NodeManagerHostname"),
                      "address": node.get("NodeManagerAddress"), "cpus": res.get("CPU", 0.0),
                      "gpus": res.get("GPU", 0.0), "memory_gb": round(res.get("memory", 0.0) / 2**30, 1),
                      "custom": custom})
    return found


def _fits(node: dict[str, Any], resources: Resources) -> bool:
    return (node["cpus"] >= resources.num_cpus and node["gpus"] >= resources.num_gpus
            and all(node["custom"].get(k, 0.0) >= v for k, v in resources.custom.items()))


def _describe(resources: Resources) -> str:
    text = f"{resources.num_cpus:g} CPUs and {resources.num_gpus:g} GPUs"
    return text + "".join(f", {v:g} {k}" for k, v in sorted(resources.custom.items()))


def check_fits(ray: Any, resources: Resources, what: str) -> None:
    """A ConfigError when no live node has ``resources`` (Ray would wait for such a node
    for ever); the nodes there are are named."""
    live = nodes(ray)
    if any(_fits(n, resources) for n in live):
        return
    have = "; ".join(f"{n['host']} ({n['cpus']:g} CPUs, {n['gpus']:g} GPUs"
                     + "".join(f", {v:g} {k}" for k, v in sorted(n["custom"].items())) + ")"
                     for n in live) or "no live node"
    raise ConfigError(f"{what} asks Ray for {_describe(resources)}, which no node of the cluster has ({have}); "
                      "lower [tool.lab.ray] num_cpus / num_gpus (or the stage's [tool.lab.ray.stages] entry, or "
                      "its devices), or add a node that has them")


def task_environment(settings: RaySettings) -> dict[str, str]:
    """What a task adds to its worker's environment: every ``LAB_*`` variable of this process
    (but the ones tied to this process) and those ``env_vars`` names."""
    env = {k: v for k, v in os.environ.items() if k.startswith(ENV_PREFIX) and k not in LOCAL_ONLY_ENV}
    for name in settings.env_vars:
        if name in os.environ:
            env[name] = os.environ[name]
    return env


def task_options(resources: Resources, name: str) -> dict[str, Any]:
    """``.options(...)`` for one of our tasks: its resources, a name Ray's tools show, and
    no retry by Ray (the runner retries a failed stage; the study retries a lost trial)."""
    options = {"num_cpus": resources.num_cpus, "num_gpus": resources.num_gpus, "max_retries": 0,
               "retry_exceptions": False, "name": name}
    if resources.custom:
        options["resources"] = dict(resources.custom)
    return options
