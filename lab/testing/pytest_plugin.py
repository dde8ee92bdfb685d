"""lab's pytest plugin: fixtures for a plugin's tests, loaded by every pytest run where lab
is installed (the ``pytest11`` entry point ``lab``; ``-p no:lab`` turns it off).

- ``bare_lab``: an empty lab folder (a pyproject.toml with an empty ``[tool.lab]``), the
  current directory for the test, ``LAB_HOME`` unset. A ``Path``.
- ``tiny_dataset``: a small generic tabular task (``TinyDataset``): 600 events of 20
  entities over two weeks with an id, an event time, an entity id, an amount and a 0/1
  label, as a polars frame and as a Parquet file.
- ``boring_model``: the boring lab's model trained on ``tiny_dataset`` in ``bare_lab``,
  registered as version 1 and champion (``BoringModel``): the lab lists
  ``lab.testing.boring`` in ``[tool.lab] plugins``, its events are the offline store's
  source ``events``, and ``boring_model.materialize()`` writes its feature view to
  whichever online store the lab's plugins give, so ``lab.load_model("boring")`` and
  ``lab serve`` score with it.
- ``lab_pm``: a function ``lab_pm(*plugins, config="")`` giving the plugin manager of
  ``bare_lab`` (built-ins, entry points, ``[tool.lab] plugins``) with ``plugins``
  registered too and ``config`` (TOML text) added to the lab's pyproject.toml first; the
  lab's ``LabConfig`` is ``pm.config``.

A conftest.py fixture of the same name overrides these (pytest's rule). Nothing heavy is
imported until a fixture is used, so loading this plugin costs a pytest run nothing.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import textwrap
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

BORING_PLUGIN = "lab.testing.boring"


def write_bare_pyproject(folder: Path, body: str = "") -> Path:
    """``folder/pyproject.toml`` of a lab named ``demo-lab`` whose ``[tool.lab]`` is ``body``."""
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / "pyproject.toml"
    path.write_text("[project]\nname = \"demo-lab\"\nversion = \"0\"\n\n[tool.lab]\n" + textwrap.dedent(body))
    return path


def add_to_lab(root: Path, *, plugins: tuple[str, ...] = (), toml: str = "") -> None:
    """Add ``plugins`` to the lab's ``[tool.lab] plugins`` and append ``toml`` (tables such as
    ``[tool.lab.json_online]``) to its pyproject.toml."""
    import tomllib

    from lab.errors import ConfigError

    path = Path(root) / "pyproject.toml"
    text = path.read_text()
    if plugins:
        table = tomllib.loads(text).get("tool", {}).get("lab", {})
        listed = list(table.get("plugins", []))
        wanted = [p for p in plugins if p not in listed]
        if wanted and "plugins" in table:
            raise ConfigError(f"{path} already sets [tool.lab] plugins = {listed}; add {wanted} to that list")
        if wanted:
            lines = text.splitlines(keepends=True)
            at = next((i for i, line in enumerate(lines) if line.strip() == "[tool.lab]"), None)
            if at is None:
                raise ConfigError(f"{path} has no [tool.lab] table; start the lab with `lab init` or the bare_lab fixture")
            lines.insert(at + 1, f"plugins = {wanted!r}\n".replace("'", '"'))
            text = "".join(lines)
    if toml:
        text = text.rstrip("\n") + "\n\n" + textwrap.dedent(toml).strip("\n") + "\n"
    path.write_text(text)


@dataclass
class TinyDataset:
    """A small generic tabular task: ``frame`` (polars; ``tiny_events``'s columns) and the
    same rows at ``path`` (Parquet), with the roles of its columns named."""

    frame: Any
    path: Path
    id: str = "EVENT_ID"
    time: str = "EVENT_TIME"
    entity: str = "ENTITY_ID"
    label: str = "LABEL"
    features: tuple[str, ...] = ("AMOUNT",)


@dataclass
class BoringModel:
    """The registered boring model of a lab (``lab.testing.boring``): ``version`` is its
    ``ModelVersion`` (1, champion), ``model`` the trained ``BoringLinearModel``,
    ``metrics`` its validation metrics on the last four days, ``example`` a valid request."""

    root: Path
    version: Any
    model: Any
    metrics: dict[str, float]
    spec: Any
    view: Any
    example: dict[str, Any] = field(default_factory=dict)
    name: str = "boring"

    @property
    def as_of(self) -> dt.datetime:
        """The end of the data: the online store is materialized as of this time by default."""
        from lab.testing.boring import DAYS, START

        return START + dt.timedelta(days=DAYS)

    def materialize(self, as_of: dt.datetime | None = None) -> int:
        """Write the boring view as of ``as_of`` (default: the end of the data) from the
        lab's offline store into its online store (``lab_online_store``); the rows written."""
        from lab.config import load_config
        from lab.features.materialize import materialize_view
        from lab.plugins import get_plugin_manager

        config = load_config(self.root)
        pm = get_plugin_manager(config)
        offline, online = pm.hook.lab_offline_store(config=config), pm.hook.lab_online_store(config=config)
        try:
            return materialize_view(offline, online, self.view, as_of or self.as_of, full=True).written
        finally:
            online.close()
            offline.close()

    def load(self, *, ledger: bool = False):
        """``lab.load_model("boring@champion")`` for this lab: a ``Predictor`` (close it)."""
        from lab.serving.predictor import load_model

        return load_model(f"{self.name}@champion", root=self.root, ledger=ledger)


def train_boring_model(root: Path, dataset: TinyDataset) -> BoringModel:
    """Declare the boring model in the lab at ``root``, load ``dataset`` as source
    ``events``, train on the first ten days with point-in-time features, validate on the
    rest, save, register and make it champion."""
    import json

    import numpy as np

    from lab.config import load_config
    from lab.plugins import get_plugin_manager
    from lab.registry import Registry
    from lab.testing.boring import BORING_SPEC, ENTITY_AMOUNTS, EVENT, START, BoringLinearFlavor

    add_to_lab(root, plugins=(BORING_PLUGIN,))
    config = load_config(root)
    pm = get_plugin_manager(config)
    offline = pm.hook.lab_offline_store(config=config)
    try:
        offline.write_source(ENTITY_AMOUNTS.source, dataset.frame.to_arrow())
        rows = dataset.frame.select(dataset.id, dataset.time, dataset.entity, *dataset.features, dataset.label)
        table = offline.get_historical_features(rows.to_arrow(), [ENTITY_AMOUNTS], dataset.time)
    finally:
        offline.close()
    import polars as pl  # with the data, not at plugin load

    frame = pl.from_arrow(table)
    x = frame.select(BORING_SPEC.features).to_numpy().astype(np.float32)
    y = frame[BORING_SPEC.label].to_numpy().astype(np.float32)
    train = (frame[dataset.time] < START + dt.timedelta(days=10)).to_numpy()
    flavor = BoringLinearFlavor()
    fitted = flavor.fit(x[train], y[train], x[~train], y[~train], BORING_SPEC.features, {}, seed=0,
                        workdir=root / "runs" / "boring", max_epochs=8, task=BORING_SPEC.task)
    digest = hashlib.sha256(json.dumps(fitted.model.to_json(), sort_keys=True).encode()).hexdigest()[:16]
    artifact = f"runs/models/boring/{digest}"
    flavor.save(fitted.model, root / artifact)
    with Registry.open(config.registry_path, project_root=root) as registry:
        version = registry.register_model(
            "boring", run_id=None, flavor=flavor.name, artifact_path=artifact, metrics=fitted.metrics,
            lineage={"feature_views": {ENTITY_AMOUNTS.name: ENTITY_AMOUNTS.version}})
        registry.promote("boring", version.version, reason="the boring_model fixture")
    return BoringModel(root=root, version=version, model=fitted.model, metrics=fitted.metrics, spec=BORING_SPEC,
                       view=ENTITY_AMOUNTS, example=dict(EVENT.example))


# ------------------------------------------------------------------------------ fixtures


@pytest.fixture
def bare_lab(tmp_path, monkeypatch) -> Path:
    """An empty lab folder (a pyproject.toml with an empty [tool.lab]); cwd is set to it."""
    write_bare_pyproject(tmp_path)
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("LAB_HOME", raising=False)
    return tmp_path


@pytest.fixture
def tiny_dataset(tmp_path) -> TinyDataset:
    """600 seeded events of 20 entities over two weeks (``lab.testing.boring.tiny_events``),
    as a polars frame and as ``tiny_events.parquet`` in the test's temporary folder."""
    from lab.testing.boring import tiny_events

    frame = tiny_events()
    path = tmp_path / "tiny_events.parquet"
    frame.write_parquet(path)
    return TinyDataset(frame=frame, path=path)


@pytest.fixture
def boring_model(bare_lab, tiny_dataset) -> BoringModel:
    """The boring model trained on ``tiny_dataset`` in ``bare_lab``, registered (version 1,
    champion); ``materialize()`` fills the lab's online store, ``load()`` scores with it."""
    return train_boring_model(bare_lab, tiny_dataset)


@pytest.fixture
def lab_pm(bare_lab):
    """``lab_pm(*plugins, config="")``: the plugin manager of ``bare_lab`` with ``plugins``
    registered (each once: one already loaded through its entry point is not registered
    again) after ``config`` (TOML: tables like ``[tool.lab.my_plugin]``) is added to the
    lab's pyproject.toml; ``pm.config`` is the lab's ``LabConfig``."""
    from lab.config import load_config
    from lab.plugins import get_plugin_manager

    def make(*plugins, config: str = ""):
        if config:
            add_to_lab(bare_lab, toml=config)
        lab_config = load_config(bare_lab)
        pm = get_plugin_manager(lab_config)
        for plugin in plugins:
            if not pm.is_registered(plugin):
                pm.register(plugin, name=getattr(plugin, "__name__", None))
        pm.config = lab_config
        return pm

    return make
