"""The bandit loop's step and command: one update of an experiment's Thompson bandit
(``lab.experiments.bandit_loop``) reported with the feedback of what it serves
(``lab.monitoring.feedback``: exploration share, coverage, diversity, holdout share).

The two live here, above both packages, because the experiments package sits below
monitoring and may not import it. ``bandit_update`` is the notebook stage (it writes
``data/bandit_<experiment>.json``); ``lab experiment bandit-update`` is the same from a
terminal or a scheduler (cron every few minutes: each update counts only new outcomes).
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
from pathlib import Path
from typing import Any

from lab import events
from lab.errors import ConfigError
from lab.experiments.bandit_loop import BANDIT_UPDATED, KEYS, update_bandit_for
from lab.monitoring.feedback import feedback_for
from lab.pipeline.context import StageContext

DEFAULT_WINDOW = dt.timedelta(days=1)
"""The ledger window the feedback report of an update covers, unless told otherwise."""


def run_update(config: Any, pm: Any, experiment: str, outcomes: Any, *, window: dt.timedelta = DEFAULT_WINDOW,
               item: str | None = None, actor: str | None = None, **options: Any) -> dict:
    """One update of ``experiment``'s bandit (``update_bandit_for``; ``options`` go to it:
    ``model``, ``by``, ``id_column``, ``label_column``, ``time_column``, ``label_delay``,
    ``floor``, ``seed``, ...), then the feedback report of its last ``window`` of the
    ledger (``item``: the request field naming what is decided on; default the scores).
    Emits ``experiment.bandit_updated`` with the counts, weights and diversity. Returns
    ``{"update": ..., "feedback": ..., "text": ...}`` (JSON-able)."""
    update = update_bandit_for(config, experiment, outcomes, pm=pm, actor=actor, **options)
    reports = feedback_for(config, experiment=experiment, window=window, item=item)
    feedback = next((r for r in reports if r.n_rows), reports[0] if reports else None)
    out = {"update": update.to_dict(), "feedback": feedback.to_dict() if feedback else None,
           "text": update.text() + ("\n" + feedback.text() if feedback else "")}
    variants = feedback.variants if feedback else None
    events.emit(pm, BANDIT_UPDATED, experiment=experiment, counted=update.n_counted, allocated=update.allocated,
                weights=update.weights, exploration_share=feedback.exploration_share if feedback else None,
                at_floor=feedback.at_floor if feedback else None,
                entropy=variants.entropy if variants else None, gini=variants.gini if variants else None)
    return out


def bandit_update(root, run_dir, *, experiment: str, outcomes: Any, window_s: float = DEFAULT_WINDOW.total_seconds(),
                  item: str | None = None, **options: Any) -> dict:
    """The notebook stage: ``run_update`` for the lab at ``root``, written to
    ``data/bandit_<experiment>.json``. ``outcomes`` is a Parquet/CSV path (relative to the
    root) or a frame; ``window_s`` the feedback window in seconds."""
    with StageContext.open(root, run_dir) as ctx:
        if isinstance(outcomes, str) and not Path(outcomes).is_absolute():
            outcomes = str(ctx.config.root / outcomes)
        out = run_update(ctx.config, ctx.pm, experiment, outcomes, window=dt.timedelta(seconds=window_s), item=item,
                         actor="bandit loop", **options)
        ctx.write_json(f"data/bandit_{experiment}.json", out)
        return out


# -- lab experiment bandit-update ---------------------------------------------------------------

def bandit_update_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("name", help="the running experiment or flag whose bandit to update")
    p.add_argument("--outcomes", required=True,
                   help="Parquet or CSV file of outcomes: the id column and a 0/1 column (1: success)")
    p.add_argument("--by", choices=KEYS, default="event",
                   help="join outcomes on the prediction's event id (default) or on the experiment's unit")
    p.add_argument("--id-column", dest="id_column",
                   help="the outcomes' id column (default: the model's request id; unit_id with --by unit)")
    p.add_argument("--label-column", dest="label_column",
                   help="the outcomes' 0/1 column (default: the model's label; value with --by unit)")
    p.add_argument("--time-column", dest="time_column",
                   help="the outcomes' event time: an outcome counts once it plus --label-delay-s has passed")
    p.add_argument("--label-delay-s", dest="label_delay", type=float, default=0.0,
                   help="seconds after its event time an outcome is known (with --time-column)")
    p.add_argument("--floor", type=float,
                   help="each arm's least share of the experiment's traffic (default: the loop's, else 0.05)")
    p.add_argument("--seed", type=int, help="seed of a new loop's random generator")
    p.add_argument("--model", help="the model whose spec names the columns (default: the lab's)")
    p.add_argument("--item", help="the request field naming what is decided on, for coverage and diversity "
                   "(default: score buckets)")
    p.add_argument("--window-h", dest="window_h", type=float, default=DEFAULT_WINDOW.total_seconds() / 3600,
                   help="hours of the ledger the feedback report covers (default 24)")
    p.add_argument("--json", action="store_true", help="print the update and its feedback report as JSON")


def bandit_update_run(args: argparse.Namespace, ctx) -> int:
    """``lab experiment bandit-update NAME --outcomes PATH``: count new outcomes, serve the
    new allocation, print it with the feedback report."""
    if args.window_h <= 0:
        raise ConfigError(f"--window-h must be above 0, got {args.window_h:g}")
    options = {k: v for k, v in (("id_column", args.id_column), ("label_column", args.label_column),
                                 ("time_column", args.time_column), ("floor", args.floor), ("seed", args.seed),
                                 ("model", args.model)) if v is not None}
    out = run_update(ctx.config, ctx.pm, args.name, args.outcomes, window=dt.timedelta(hours=args.window_h),
                     item=args.item, by=args.by, label_delay=args.label_delay, actor="lab experiment bandit-update",
                     **options)
    if args.json:
        print(json.dumps({k: v for k, v in out.items() if k != "text"}, indent=2, sort_keys=True))
    else:
        print(out["text"])
    return 0
