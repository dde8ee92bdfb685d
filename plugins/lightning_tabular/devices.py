"""Where a ``lightning_mlp`` model trains: accelerator, devices, strategy, precision, nodes.

``TrainingDevices`` is the checked form of ``[tool.lab.training]`` (or of the train
stage's parameters of the same names, or of ``fit(devices=...)``): ``trainer_kwargs()``
is what ``pl.Trainer`` gets, the values as given; ``identity()`` is what the checkpoint
fingerprint and the sweep's trial key add, so a fit never resumes checkpoints made with
other settings. The defaults (one CPU process, 32-bit floats) add nothing, so models,
checkpoints and trial folders made before these settings existed still match.

Distributed data parallel comes in two shapes (docs/training.md, Devices):

- **launched in-process** (``ddp_fork``, ``ddp_notebook``): the calling process forks
  the ranks and waits; only rank 0's weights come back to it. ``runs_in_child_processes``
  says so, and ``adopt_rank_zero_result`` reads the history, epoch count and newest
  checkpoint that rank 0 left on disk, so the code after ``trainer.fit`` sees what a
  one-process fit leaves;
- **launched outside** (``ddp`` under ``torchrun`` or ``srun``): every rank runs the
  whole ``fit``; checkpoints and the saved model are written by global rank 0 only
  (``is_global_zero``).

``strategy = "auto"`` is refused with more than one device or node: Lightning would pick
``ddp`` and start the other ranks by re-running this process's command line.

This module imports neither torch nor Lightning at import time: ``LightningMLP.fit``
checks the settings before it loads them.
"""

from __future__ import annotations

import os
import sys
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any, Mapping

from lab.errors import ConfigError

WHERE = "[tool.lab.training]"
"""How errors name the settings: the config table (the stage's parameters share its key names)."""

ACCELERATORS = ("cpu", "gpu", "cuda", "mps", "auto")
"""Lightning's accelerators this flavor trains on ("gpu" is CUDA, or MPS on Apple silicon)."""

STRATEGIES = ("auto", "ddp", "ddp_fork", "ddp_notebook")
"""One process ("auto" on one device), or distributed data parallel; see the module
docstring. Not "ddp_spawn": pickling the loaders' tensors for spawned processes fails
under torch's default sharing strategy ("bad value(s) in fds_to_keep"), and ddp_fork does
the same work without pickling."""

PRECISIONS = ("32-true", "64-true", "bf16-mixed", "16-mixed", "32", "64", "bf16", "16", 32, 64, 16)
"""Lightning's precisions, long names first (the short ones are Lightning's aliases). Not
"16-true" or "bf16-true": they leave a half-precision network, which the scorer (float32
rows) cannot serve; mixed precision trains as fast and keeps float32 weights."""

_CANONICAL_PRECISION = {"32": "32-true", 32: "32-true", "64": "64-true", 64: "64-true",
                        "16": "16-mixed", 16: "16-mixed", "bf16": "bf16-mixed"}

DEFAULTS: dict[str, Any] = {"accelerator": "cpu", "devices": 1, "strategy": "auto", "precision": "32-true",
                            "num_nodes": 1}
"""The settings of a fit given none: what ``lightning_mlp`` always did (= ``lab.config.TrainingConfig()``)."""


def _allowed(values: tuple) -> str:
    return ", ".join(repr(v) for v in values)


@dataclass(frozen=True)
class TrainingDevices:
    """Checked training-device settings; build with ``from_settings``.

    ``devices`` is a count of processes (CPU) or devices (GPU), -1 or "auto" for every
    device there is, or a tuple of GPU indices; the job runs ``devices × num_nodes``
    ranks. ``precision`` is kept as given; ``canonical_precision`` maps Lightning's
    aliases (32, "16", "bf16") to the long names.
    """

    accelerator: str = "cpu"
    devices: int | str | tuple[int, ...] = 1
    strategy: str = "auto"
    precision: str | int = "32-true"
    num_nodes: int = 1

    @classmethod
    def from_settings(cls, settings: "Mapping[str, Any] | TrainingDevices | None" = None) -> "TrainingDevices":
        """The settings over ``DEFAULTS``, checked; a bad key or value is a ``ConfigError``
        naming it and the values allowed."""
        if isinstance(settings, TrainingDevices):
            return settings
        settings = dict(settings or {})
        unknown = sorted(set(settings) - set(DEFAULTS))
        if unknown:
            raise ConfigError(f"unknown {WHERE} setting(s) {', '.join(map(str, unknown))}; known: "
                              f"{', '.join(DEFAULTS)}")
        merged = {**DEFAULTS, **{k: v for k, v in settings.items() if v is not None}}
        accelerator, devices, strategy, precision, num_nodes = (merged[k] for k in DEFAULTS)
        if accelerator not in ACCELERATORS:
            raise ConfigError(f"{WHERE} accelerator must be one of {_allowed(ACCELERATORS)}; got {accelerator!r}")
        if strategy not in STRATEGIES:
            raise ConfigError(f"{WHERE} strategy must be one of {_allowed(STRATEGIES)}; got {strategy!r}")
        if isinstance(precision, bool) or precision not in PRECISIONS:
            hint = (" (a half-precision network cannot be served; use 'bf16-mixed' or '16-mixed')"
                    if precision in ("16-true", "bf16-true") else "")
            raise ConfigError(f"{WHERE} precision must be one of {_allowed(PRECISIONS)}; got {precision!r}{hint}")
        if isinstance(num_nodes, bool) or not isinstance(num_nodes, int) or num_nodes < 1:
            raise ConfigError(f"{WHERE} num_nodes must be a whole number of 1 or more; got {num_nodes!r}")
        devices = _check_devices(devices)
        if accelerator == "cpu" and isinstance(devices, tuple):
            raise ConfigError(f"{WHERE} devices = {list(devices)} names GPUs, but accelerator is 'cpu': on CPU, "
                              "devices is a number of processes (e.g. 2); set accelerator = 'gpu' to pick GPUs")
        if accelerator == "cpu" and devices == -1:
            raise ConfigError(f"{WHERE} devices = -1 means every GPU; on accelerator 'cpu' devices is a number of "
                              "processes (e.g. 2)")
        several = devices != 1 and not (isinstance(devices, tuple) and len(devices) == 1)
        if strategy == "auto" and (several or num_nodes > 1):
            # Lightning's pick would be "ddp", which re-runs this process's command line for the
            # other ranks: a second `lab` command or kernel, not a training rank.
            raise ConfigError(f"{WHERE} devices = {devices!r} (num_nodes = {num_nodes}) with strategy = 'auto': "
                              "choose the strategy: 'ddp_fork' (this process forks the ranks; lab run's stages) "
                              "or 'ddp' (every rank started by torchrun or srun)")
        if accelerator == "cpu" and _CANONICAL_PRECISION.get(precision, precision) == "16-mixed":
            raise ConfigError(f"{WHERE} precision {precision!r} (float16) needs a GPU; on accelerator 'cpu' use "
                              "'bf16-mixed' or '32-true'")
        return cls(accelerator, devices, strategy, precision, num_nodes)

    @property
    def canonical_precision(self) -> str:
        return _CANONICAL_PRECISION.get(self.precision, self.precision)  # type: ignore[return-value]

    @property
    def is_default(self) -> bool:
        """True for one CPU process in 32-bit floats: a fit as it always was."""
        return self.identity() is None

    def settings(self) -> dict[str, Any]:
        """The five settings by name (device indices as a list)."""
        out = {f.name: getattr(self, f.name) for f in fields(self)}
        if isinstance(self.devices, tuple):
            out["devices"] = list(self.devices)
        return out

    def trainer_kwargs(self) -> dict[str, Any]:
        """``pl.Trainer``'s ``accelerator``, ``devices``, ``strategy``, ``precision`` and
        ``num_nodes``, as given."""
        return self.settings()

    def identity(self) -> dict[str, Any] | None:
        """What the checkpoint fingerprint and the trial key add: the settings, precision
        in its long name; None for the defaults (so earlier checkpoints still resume).
        Every setting counts: another precision, accelerator or number of ranks trains
        other weights, and a checkpoint of one must not be resumed under another."""
        ident = {**self.settings(), "precision": self.canonical_precision}
        return None if ident == DEFAULTS else ident

    def check_available(self) -> None:
        """Raise ``ConfigError`` when this machine lacks what the settings ask for: a CUDA
        or MPS device, or as many GPUs as listed or counted. Imports torch; call it
        after Lightning is imported (Lightning makes torch's CUDA check fork-safe)."""
        import torch  # only the fit that needs it pays for the import

        kind = self.accelerator
        if kind in ("gpu", "cuda"):
            if not torch.cuda.is_available():
                mps = getattr(torch.backends, "mps", None)
                if kind == "gpu" and mps is not None and mps.is_available():
                    return  # Lightning's "gpu" is MPS on Apple silicon
                build = f"torch {torch.__version__}" + (" is a CPU-only build" if torch.version.cuda is None else
                                                        f" (CUDA {torch.version.cuda}) sees no CUDA device")
                raise ConfigError(f"{WHERE} accelerator = {kind!r}, but {build}; set accelerator = 'cpu' (and "
                                  "devices to a process count), or run where a GPU and a CUDA build of torch are")
            count = torch.cuda.device_count()
            wanted = (max(self.devices) + 1) if isinstance(self.devices, tuple) else self.devices
            if isinstance(wanted, int) and wanted > count:
                raise ConfigError(f"{WHERE} devices = {self.settings()['devices']!r} asks for more GPUs than the "
                                  f"{count} this machine has (CUDA_VISIBLE_DEVICES={os.environ.get('CUDA_VISIBLE_DEVICES', 'unset')})")
        elif kind == "mps":
            mps = getattr(torch.backends, "mps", None)
            if mps is None or not mps.is_available():
                raise ConfigError(f"{WHERE} accelerator = 'mps', but this machine has no Apple-silicon GPU that "
                                  "torch can use; set accelerator = 'cpu'")


def _check_devices(devices: Any) -> int | str | tuple[int, ...]:
    if isinstance(devices, (list, tuple)):
        if devices and all(isinstance(d, int) and not isinstance(d, bool) and d >= 0 for d in devices) \
                and len(set(devices)) == len(devices):
            return tuple(devices)
    elif devices == "auto":
        return devices
    elif isinstance(devices, int) and not isinstance(devices, bool) and (devices >= 1 or devices == -1):
        return devices
    raise ConfigError(f"{WHERE} devices must be a count of 1 or more, -1 or 'auto' (every device), or a list "
                      f"of distinct GPU indices such as [0, 1]; got {devices!r}")


# -- ranks ----------------------------------------------------------------------------------

def global_rank() -> int:
    """This process's rank in a DDP job; 0 outside one.

    The process group when one is up (after a DDP fit it stays up until the process
    exits; torch.distributed is never imported for this), else torchrun's ``RANK``.
    Not ``SLURM_PROCID``: ``srun -n 4`` also runs four processes that are no DDP job,
    and each must save what it trained.
    """
    dist = sys.modules.get("torch.distributed")
    if dist is not None and dist.is_available() and dist.is_initialized():
        return int(dist.get_rank())
    rank = os.environ.get("RANK", "")
    return int(rank) if rank.isdigit() else 0


def is_global_zero() -> bool:
    """Whether this process writes what a DDP job writes once (checkpoints, the model)."""
    return global_rank() == 0


# -- in-process launchers: what rank 0 left behind -------------------------------------------

def runs_in_child_processes(trainer: Any) -> bool:
    """Whether ``trainer.fit`` trains in processes it starts (``ddp_fork``, ``ddp_notebook``)
    rather than in this one."""
    from pytorch_lightning.strategies.launchers import _MultiProcessingLauncher  # Lightning is loaded by now

    return isinstance(getattr(trainer.strategy, "launcher", None), _MultiProcessingLauncher)


def adopt_rank_zero_result(trainer: Any, module: Any, saver: Any, fingerprint: str) -> dict[int, dict[str, float]]:
    """After a fit that ran in child processes: take rank 0's newest checkpoint as this
    process's (``saver.last_path``), its validation history (``module.history``) and its
    epoch count (``trainer.current_epoch``, as a one-process fit leaves it). Lightning
    already loaded rank 0's final weights into ``module``. Returns the history, for the
    epoch observers to be called with here rather than in the children."""
    import torch  # loaded by the fit already

    from .checkpoints import newest_valid_checkpoint

    last, _ = newest_valid_checkpoint(Path(saver.folder), fingerprint)
    if last is None:  # no epoch ran (e.g. every epoch was already done)
        return dict(module.history)
    state = torch.load(last, map_location="cpu", weights_only=True)
    module.history = {int(k): dict(v) for k, v in state.get("lab_history", {}).items()}
    saver.last_path = last
    trainer.fit_loop.epoch_progress.current.completed = int(state["epoch"]) + 1
    return dict(module.history)
