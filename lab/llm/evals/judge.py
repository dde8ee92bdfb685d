"""LLM-as-judge agreement: how often a judge agrees with human labels, and the rule that
a gate uses a judge only after its agreement has been measured and recorded.

``judge_agreement(judge, examples)`` runs the judge on labelled examples (input, output,
expectation, human label) and returns accuracy, Cohen's kappa and the confusion counts.
``record_agreement`` stores it as a registry run of kind ``judge_check`` (params: judge,
examples, set digest; metrics: accuracy, kappa) and emits ``llm.judge_checked``;
``require_trusted`` refuses a judge whose latest recorded kappa is below
``[tool.lab.llm.evals] min_judge_kappa`` (default 0.6, "substantial" agreement) or that
has none. ``lab llm judge-check JUDGE --set FILE`` does all three.

Built in: ``similarity_judge``, deterministic and offline: it passes an output whose
embedding's cosine with the expectation's is at least ``[tool.lab.llm.evals]
judge_threshold`` (the lab's embedder). A plugin's judge of the same name wins.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Sequence

from lab.errors import ConfigError, LabError
from lab.llm.evals.settings import eval_settings

SIMILARITY_JUDGE = "similarity_judge"
RUN_KIND = "judge_check"


class SimilarityJudge:
    """Passes when cosine(embed(output), embed(expectation)) >= ``threshold``; the score
    is the cosine clipped to [0, 1]. ``embedder`` is a ``lab.llm.types.Embedder``."""

    name = SIMILARITY_JUDGE

    def __init__(self, embedder: Any, threshold: float):
        self.embedder = embedder
        self.threshold = float(threshold)

    def judge(self, input: str, output: str, expectation: str) -> tuple[bool, float, str]:
        vectors = self.embedder.embed([output, expectation])
        cosine = float(vectors[0] @ vectors[1])
        passed = cosine >= self.threshold
        return passed, min(max(cosine, 0.0), 1.0), f"cosine {cosine:.3f} {'>=' if passed else '<'} {self.threshold:.3f}"


def find_judge(config, pm, name: str) -> Any:
    """The judge ``name``: a ``lab_llm_judges`` plugin's, else the built-in
    ``similarity_judge``; the error lists both kinds."""
    from lab.llm.plugins import _gathered, get_embedder
    found = _gathered(pm, config, "lab_llm_judges", "judge")
    if name in found:
        return found[name]
    if name == SIMILARITY_JUDGE:
        return SimilarityJudge(get_embedder(config, pm), eval_settings(config).judge_threshold)
    known = ", ".join(sorted({*found, SIMILARITY_JUDGE}))
    raise ConfigError(f"no judge {name!r}; known judges: {known} (plugins add more through lab_llm_judges)")


@dataclass(frozen=True)
class LabelledExample:
    """One example a human labelled: did ``output`` meet ``expectation`` for ``input``?"""

    input: str
    output: str
    expectation: str
    label: bool


@dataclass(frozen=True)
class Agreement:
    """A judge against human labels. ``tp``: both pass; ``tn``: both fail; ``fp``: the judge
    passes what a human failed; ``fn``: the judge fails what a human passed. ``kappa`` is
    Cohen's kappa, (p_o - p_e) / (1 - p_e): 0 is chance agreement, 1 perfect."""

    judge: str
    n: int
    accuracy: float
    kappa: float
    tp: int
    fp: int
    fn: int
    tn: int
    disagreements: tuple[int, ...] = ()

    def to_dict(self) -> dict[str, Any]:
        out = asdict(self)
        out["disagreements"] = list(self.disagreements)
        return out


def load_labelled(path: str | Path) -> list[LabelledExample]:
    """Labelled examples from JSONL: ``input``, ``output``, ``expectation``, ``label``
    (true/false, or "pass"/"fail")."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"no labelled set at {path}; pass --set FILE (JSONL with input, output, expectation, label)")
    out = []
    for number, line in enumerate(path.read_text().splitlines(), 1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as exc:
            raise ConfigError(f"{path}:{number}: not JSON ({exc.msg})") from None
        missing = [k for k in ("output", "expectation", "label") if k not in row]
        if missing:
            raise ConfigError(f"{path}:{number}: missing {', '.join(missing)} (each line needs input, output, "
                              "expectation, label)")
        label = row["label"]
        if isinstance(label, str) and label.lower() in ("pass", "fail", "true", "false"):
            label = label.lower() in ("pass", "true")
        if not isinstance(label, bool):
            raise ConfigError(f"{path}:{number}: label must be true/false or \"pass\"/\"fail\", got {label!r}")
        out.append(LabelledExample(str(row.get("input", "")), str(row["output"]), str(row["expectation"]), label))
    return out


def cohen_kappa(tp: int, fp: int, fn: int, tn: int) -> float:
    """Cohen's kappa of two binary raters from their 2x2 table; a LabError when one rater
    gave a single label to every example (kappa is then undefined)."""
    n = tp + fp + fn + tn
    if n == 0:
        raise LabError("no labelled examples; the set must hold some")
    p_o = (tp + tn) / n
    p_e = ((tp + fp) * (tp + fn) + (fn + tn) * (fp + tn)) / (n * n)
    if p_e >= 1.0:
        raise LabError("kappa is undefined when the judge or the humans give one label to every example; "
                       "label a set with both passing and failing outputs")
    return (p_o - p_e) / (1.0 - p_e)


def judge_agreement(judge: Any, examples: Sequence[LabelledExample]) -> Agreement:
    """Run ``judge`` on every example and compare with the human labels."""
    if not examples:
        raise LabError("the labelled set is empty; add examples with both pass and fail labels")
    if len({e.label for e in examples}) < 2:
        raise LabError("the labelled set has only one kind of human label; add passing and failing examples, "
                       "or agreement says nothing")
    tp = fp = fn = tn = 0
    wrong = []
    for i, ex in enumerate(examples):
        verdict, _, _ = judge.judge(ex.input, ex.output, ex.expectation)
        verdict = bool(verdict)
        tp += verdict and ex.label
        fp += verdict and not ex.label
        fn += (not verdict) and ex.label
        tn += (not verdict) and not ex.label
        if verdict != ex.label:
            wrong.append(i)
    n = len(examples)
    return Agreement(judge.name, n, (tp + tn) / n, cohen_kappa(tp, fp, fn, tn), tp, fp, fn, tn, tuple(wrong))


def examples_digest(examples: Sequence[LabelledExample]) -> str:
    text = json.dumps([asdict(e) for e in examples], sort_keys=True)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def record_agreement(config, pm, agreement: Agreement, digest: str) -> str:
    """Store ``agreement`` as a ``judge_check`` registry run; returns the run id."""
    from lab.events import emit
    from lab.registry import Registry

    with Registry.open(config.registry_path, project_root=config.root) as reg:
        run_id = reg.start_run(kind=RUN_KIND, params={"judge": agreement.judge, "examples": agreement.n,
                                                      "set_digest": digest},
                               name=f"judge-check {agreement.judge}")
        reg.log_metrics(run_id, {"accuracy": agreement.accuracy, "kappa": agreement.kappa,
                                 "tp": agreement.tp, "fp": agreement.fp, "fn": agreement.fn, "tn": agreement.tn})
        reg.finish_run(run_id)
    emit(pm, "llm.judge_checked", judge=agreement.judge, kappa=agreement.kappa, accuracy=agreement.accuracy,
         n=agreement.n, run_id=run_id)
    return run_id


def recorded_kappa(config, name: str) -> float | None:
    """The kappa of ``name``'s latest ``judge_check`` run, or None when it has none."""
    from lab.registry import Registry

    if not config.registry_path.exists():
        return None
    with Registry.open(config.registry_path, project_root=config.root) as reg:
        for run in reg.list_runs(kind=RUN_KIND, limit=10_000):
            if (run.get("params") or {}).get("judge") == name and run.get("status") == "finished":
                kappa = (run.get("metrics") or {}).get("kappa")
                return None if kappa is None else float(kappa)
    return None


def require_trusted(config, name: str) -> float:
    """``name``'s recorded kappa; a LabError when none is recorded or it is below
    ``[tool.lab.llm.evals] min_judge_kappa``."""
    least = eval_settings(config).min_judge_kappa
    kappa = recorded_kappa(config, name)
    if kappa is None:
        raise LabError(f"judge {name!r} has no recorded agreement with human labels, so a gate cannot use it; "
                       f"run `lab llm judge-check {name} --set LABELLED.jsonl` first")
    if kappa < least:
        raise LabError(f"judge {name!r}'s latest agreement is kappa {kappa:.3f}, below [tool.lab.llm.evals] "
                       f"min_judge_kappa {least}; improve the judge (or its threshold) and run "
                       f"`lab llm judge-check {name}` again")
    return kappa
