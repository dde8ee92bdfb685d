"""The features step: load the source, build the point-in-time training set."""

from __future__ import annotations

from lab.pipeline.context import StageContext
from lab.steps._common import TRAINSET, spec_of, views_of, window


def features(root, run_dir, *, source_path, train_start, delta_train, delta_delay, delta_test,
             model: str | None = None) -> dict:
    """Load the Parquet at ``source_path`` into the offline store as the spec's source, then
    write the training set for the window to ``data/trainset.parquet`` and its leakage
    audit to ``data/trainset.audit.json``, and record it (its digest, the source digest, the
    window, the view versions and the audit's digest) in the registry."""
    import polars as pl  # data libraries load only in the step that runs

    from lab.features.audit import audit_path, audited_training_set, write_audit  # polars, pyarrow

    with StageContext.open(root, run_dir) as ctx:
        spec = spec_of(ctx, model)
        views = views_of(ctx, spec)
        win = window(train_start, delta_train, delta_delay, delta_test)
        events = pl.read_parquet(ctx.path(source_path))
        source_digest = ctx.offline.write_source(spec.source, events.to_arrow())
        # A value newer than its row's time minus a view's label delay fails the step here,
        # naming the view and its rows, before anything is written.
        table, digest, audit = audited_training_set(ctx.offline, views, spec, win.train_start, win.end)
        # The file carries the digest it is recorded under, so train logs that one.
        ctx.write_dataset(TRAINSET, table, digest=digest)
        audit_rel = str(audit_path(TRAINSET))
        audit_digest = write_audit(ctx.path(audit_rel), audit)
        ctx.registry.record_dataset(
            kind="training_set", name=f"{spec.name} {win.train_start}..{win.end}", digest=digest,
            path=TRAINSET, rows=table.num_rows,
            meta={"model": spec.name, "start": str(win.train_start), "end": str(win.end),
                  "source": spec.source, "source_digest": source_digest,
                  "views": {v.name: v.version for v in views},
                  "leakage_audit": {"digest": audit_digest, "path": audit_rel}},
        )
        ages = {name: (v["age_s"] or {}).get("max") for name, v in audit["views"].items()}
        return {"rows": table.num_rows, "digest": digest, "source_digest": source_digest,
                "leakage_audit": {"digest": audit_digest, "ok": audit["ok"], "max_age_s": ages}}
