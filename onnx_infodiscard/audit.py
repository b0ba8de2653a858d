"""Audit mode for CI pipelines: `--fail-if "cid[-1] > 1.2"` turns a model's numbers into an exit code.

A rule is `METRIC[LAYER] OP NUMBER`. METRIC is one of `cid`, `delta_cid`, `concentration`, `ru`;
LAYER is a layer name or an index among the chosen layers in graph order (negative counts from the
deepest); OP is one of `< <= > >=`. The metric is the mean over the images whose result converged
(the same means the report shows). A rule *fails* (the audit fails, exit code 1) when its comparison
holds: it names the condition that must not happen.
"""

from __future__ import annotations

import math
import operator
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass, replace
from typing import TYPE_CHECKING, Union

from .errors import AuditFailed, InputError, NotConverged, close_matches

if TYPE_CHECKING:  # analysis may import this module; no import cycle at run time
    from .check import PreparedModel
    from .layers import Layer
    from .results import Report

METRICS = ("cid", "delta_cid", "concentration", "ru")
OPS = {"<": operator.lt, "<=": operator.le, ">": operator.gt, ">=": operator.ge}
# Greedy LAYER up to the last `]` before the operator, so names that contain brackets still parse.
_RULE = re.compile(r"^\s*([A-Za-z_]+)\s*\[(.*)\]\s*(<=|>=|<|>)\s*(\S+)\s*$")
OPTION = "fail_if"  # the argument the rules come from, for error messages
_EXAMPLE = "e.g. 'cid[-1] > 1.2' or 'concentration[/relu2/Relu_output_0] < 0'"
_HOW = {
    "concentration": "concentration needs a foreground (a box, a mask, a boxes CSV or the card's boxes)",
    "ru": "ru needs the reconstruction-uncertainty measurement, which this run did not make",
}

#: A per-layer table: rows with `layer` and metric means; optional `index`, `depth`, `n_images`, `model`.
Table = Sequence[Mapping[str, object]]


@dataclass(frozen=True)
class Rule:
    """One parsed `--fail-if` expression."""

    text: str
    metric: str
    layer: str  # as written: a name, or an integer index among the chosen layers
    op: str
    threshold: float

    def holds(self, value: float) -> bool:
        return OPS[self.op](value, self.threshold)


@dataclass(frozen=True)
class RuleOutcome:
    """A rule on one model: the value it saw and whether the audit fails on it."""

    rule: str
    metric: str
    layer: str  # the resolved layer name
    op: str
    threshold: float
    value: float | None  # mean over converged images; None when no image converged
    n_images: int  # converged images behind `value`
    failed: bool  # the rule's comparison held, or there was no converged result to judge
    model: str | None = None
    reason: str = ""

    def describe(self) -> str:
        where = f"{self.model}: " if self.model else ""
        seen = "no converged result" if self.value is None else f"{self.value:.4g}"
        verdict = "FAILED" if self.failed else "ok"
        return f"{where}{self.rule} -> {self.metric}[{self.layer}] = {seen}: {verdict}"

    def to_json(self) -> dict:
        return asdict(self)


def parse_rule(text: str) -> Rule:
    """`METRIC[LAYER] OP NUMBER` -> Rule; a one-line InputError (exit 2) on anything else."""
    match = _RULE.match(text)
    if not match:
        raise InputError(f"{text!r}: write METRIC[LAYER] OP NUMBER, {_EXAMPLE}", option=OPTION)
    metric, layer, op, number = match.groups()
    metric, layer = metric.lower(), layer.strip()
    if metric not in METRICS:
        raise InputError(
            f"{text!r}: unknown metric '{metric}'{close_matches(metric, METRICS)} (one of {', '.join(METRICS)})",
            option=OPTION,
        )
    if not layer:
        raise InputError(f"{text!r}: give a layer name or index inside the brackets, {_EXAMPLE}", option=OPTION)
    try:
        threshold = float(number)
    except ValueError:
        raise InputError(f"{text!r}: '{number}' is not a number", option=OPTION) from None
    if not math.isfinite(threshold):
        raise InputError(f"{text!r}: the threshold must be a finite number", option=OPTION)
    return Rule(text.strip(), metric, layer, op, threshold)


def parse_rules(texts: Iterable[str] | None) -> list[Rule]:
    """Every `--fail-if` at once, before any work, so a typo costs no analysis."""
    return [parse_rule(text) for text in texts or ()]


def evaluate(rules: Sequence[Rule], source: Union[Report, Table]) -> list[RuleOutcome]:
    """Each rule on a `Report`, or on a per-layer table (one model, or several told apart by `model`).

    On several models, a rule with a layer index applies to every model; a rule with a layer name
    applies to the models that have that layer (an InputError when none has it).
    """
    tables = _tables(source)
    outcomes = []
    for rule in rules:
        found = []
        for model, rows in tables.items():
            row = _find_layer(rule, rows, raise_unknown=len(tables) == 1)
            if row is not None:
                found.append(_outcome(rule, row, model))
        if not found:
            names = sorted({str(r["layer"]) for rows in tables.values() for r in rows})
            raise InputError(
                f"{rule.text!r}: unknown layer '{rule.layer}'{close_matches(rule.layer, names)}", option=OPTION
            )
        _check_measured(rule, found, tables)
        outcomes.extend(found)
    return outcomes


def failures(outcomes: Sequence[RuleOutcome]) -> list[RuleOutcome]:
    return [o for o in outcomes if o.failed]


def raise_on_failure(outcomes: Sequence[RuleOutcome]) -> None:
    """AuditFailed (exit 1) naming every failed rule, in one line."""
    failed = failures(outcomes)
    if failed:
        listed = "; ".join(o.describe() for o in failed[:5]) + ("; ..." if len(failed) > 5 else "")
        raise AuditFailed(f"audit failed: {len(failed)} of {len(outcomes)} rule(s) held: {listed}")


def audited(report: Report, rules: Sequence[Rule]) -> Report:
    """The report with each rule's outcome in `report.audit` (what `compare` does for every model)."""
    return replace(report, audit=tuple(evaluate(rules, report))) if rules else report


def raise_verdict(outcomes: Sequence[RuleOutcome], unconverged: Sequence[str], where: str = "report") -> None:
    """After the outputs are written: AuditFailed (exit 1) when a rule held, else NotConverged (exit 4)
    when some `unconverged` result (`image:layer` labels) missed its budget; nothing when all is well."""
    raise_on_failure(outcomes)
    if unconverged:
        shown = ", ".join(unconverged[:5]) + (", ..." if len(unconverged) > 5 else "")
        raise NotConverged(
            f"{len(unconverged)} image/layer results did not converge: {shown}; "
            f"they are marked in the {where}; try more optimisation steps"
        )


def unconverged_results(report: Report, prefix: str = "") -> list[str]:
    """`[prefix:]image:layer (D/τ=…)` of every result that missed its budget, in report order."""
    return [f"{prefix}{r.image}:{r.layer} (D/τ={r.d_over_tau:.3f})" for r in report.results if not r.converged]


def layer_json(layer: Layer) -> dict:
    """One layer as `layers --json` and `check --json` print it (`node_name` as in report.json)."""
    return {
        "index": layer.index,
        "name": layer.name,
        "op_type": layer.op_type,
        "node_name": layer.node_name,
        "shape": list(layer.shape) if layer.shape else None,
        "depth": round(layer.depth, 4),
    }


def check_json(prepared: PreparedModel, tool_version: str) -> dict:
    """The record `check --json` prints: what was converted, how, and how well it agrees with onnxruntime."""
    normalised, crosscheck = prepared.normalised, prepared.crosscheck
    return {
        "tool_version": tool_version,
        "model": str(prepared.loaded.path),
        "sha256": prepared.loaded.sha256,
        "opset": normalised.opset,
        "input": {"name": normalised.input_name, "shape": list(normalised.input_shape)},
        "passes": [{"name": p.name, "detail": p.detail} for p in normalised.passes],
        "batch_safe": prepared.conversion.batch_safe,
        "provider": crosscheck.provider,
        "provider_note": crosscheck.note,
        "tolerance": crosscheck.tolerance,
        "layers": [
            {
                **layer_json(chosen),
                "max_abs_error": agreement.max_abs_error,
                "rel_l2_error": agreement.rel_l2_error,
                "tolerance": agreement.tolerance,
                "criterion": agreement.criterion,
                "passed": agreement.passed,
            }
            for chosen, agreement in zip(prepared.layers, crosscheck.layers)
        ],
        "quantised": crosscheck.to_json()["quantised"],  # against the quantised original, if any
        "notes": list(prepared.notes),
        "seconds": round(prepared.seconds, 3),
        "passed": crosscheck.passed,
    }


# ---------------------------------------------------------------------------------------------


def _tables(source) -> dict[str | None, list[Mapping]]:
    """Rows per model (None for a single model), each model's rows in graph order."""
    if hasattr(source, "results") and hasattr(source, "layers"):
        rows = _report_rows(source)
    else:
        rows = [dict(row) for row in source]
    if not rows:
        raise InputError("the analysis has no layers to audit", option=OPTION)
    tables: dict[str | None, list[Mapping]] = {}
    for row in rows:
        tables.setdefault(row.get("model"), []).append(row)
    for group in tables.values():
        if all(row.get("index") is not None for row in group):
            group.sort(key=lambda row: row["index"])
    return tables


def _report_rows(report) -> list[dict]:
    """Per chosen layer, the means the report itself shows (`Report.layer_means`, converged images)."""
    return [dict(row) for row in report.layer_means()]


def _find_layer(rule: Rule, rows: list[Mapping], raise_unknown: bool) -> Mapping | None:
    by_name = {str(row["layer"]): row for row in rows}
    if rule.layer in by_name:
        return by_name[rule.layer]
    if re.fullmatch(r"[+-]?\d+", rule.layer):
        index = int(rule.layer)
        if not -len(rows) <= index < len(rows):
            raise InputError(
                f"{rule.text!r}: layer index {index} is out of range; "
                f"{len(rows)} layer(s) were chosen (0..{len(rows) - 1}, or -1 for the deepest)",
                option=OPTION,
            )
        return rows[index]
    if raise_unknown:
        raise InputError(
            f"{rule.text!r}: unknown layer '{rule.layer}'{close_matches(rule.layer, by_name)}; "
            "use a chosen layer's name or its index among the chosen layers",
            option=OPTION,
        )
    return None


def _outcome(rule: Rule, row: Mapping, model: str | None) -> RuleOutcome:
    value = row.get(rule.metric)
    value = float(value) if value is not None and math.isfinite(float(value)) else None
    if value is None:
        return RuleOutcome(
            rule.text,
            rule.metric,
            str(row["layer"]),
            rule.op,
            rule.threshold,
            None,
            0,
            True,
            model,
            "no converged result to judge",
        )
    n_images = int(row.get(f"n_{rule.metric}", row.get("n_images", 0)) or 0)
    return RuleOutcome(
        rule.text, rule.metric, str(row["layer"]), rule.op, rule.threshold, value, n_images, rule.holds(value), model
    )


def _check_measured(rule: Rule, found: list[RuleOutcome], tables: dict) -> None:
    """A metric the run did not measure at all is a usage error (exit 2), not a failed threshold."""
    if rule.metric not in _HOW or any(o.value is not None for o in found):
        return
    measured = any(row.get(rule.metric) is not None for rows in tables.values() for row in rows)
    converged_somewhere = any(row.get("n_images", 1) for rows in tables.values() for row in rows)  # converged count
    if not measured and converged_somewhere:
        raise InputError(f"{rule.text!r}: {_HOW[rule.metric]}", option=OPTION)
