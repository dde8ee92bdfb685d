"""Built-in plugin: lightning_tabular.

Answers ``lab_model_flavors`` with the ``lightning_mlp`` flavor (an MLP trained with
PyTorch Lightning on CPU) and, as the last-resort backend, ``lab_sweep_storage`` with a
SQLite file shared by every sweep of the lab: ``<runs_path>/sweeps.db`` (one study per
name). torch and Lightning are imported only when a flavor is asked for, so commands
that never train do not pay for them.
"""

from __future__ import annotations

from lab import hookimpl


@hookimpl
def lab_model_flavors():
    from .flavor import LightningMLP  # torch and Lightning load only when a lab asks for flavors

    return [LightningMLP()]


@hookimpl(trylast=True)
def lab_sweep_storage(config, study_name):
    # One SQLite file for every study: `optuna-dashboard` on it shows the lab's whole
    # sweep history. run_sweep creates the folder.
    return f"sqlite:///{config.runs_path}/sweeps.db"
