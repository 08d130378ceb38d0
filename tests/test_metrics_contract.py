"""The metric-name contract between dataflows/metrics.py, the rules and the dashboard.

Exported names are taken from the real exposition: every metric of the
registry gets one labelled child, `generate_latest()` renders the registry and
the sample names (`_total`, `_bucket`, `_sum`, `_count` ...) are parsed back;
the children are removed again. PromQL in the rule files and the Grafana
dashboard is reduced with regexes (strings, label matchers, ranges and
`by (...)` clauses dropped) to the metric names it selects, which must all be
exported (or recorded by deploy/prometheus/recording_rules.yaml).
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from prometheus_client import generate_latest
from prometheus_client.metrics import MetricWrapperBase
from prometheus_client.parser import text_string_to_metric_families

from dataflows import metrics

ROOT = Path(__file__).resolve().parents[1]
RULES = ROOT / "deploy" / "prometheus"
DASHBOARD = ROOT / "deploy" / "grafana" / "streamforge.json"

FUNCTIONS = {
    "abs", "absent", "avg", "avg_over_time", "ceil", "clamp_max", "clamp_min", "count",
    "count_over_time", "delta", "deriv", "floor", "histogram_quantile", "increase", "irate",
    "label_replace", "max", "max_over_time", "min", "min_over_time", "quantile", "rate",
    "round", "scalar", "sort", "sort_desc", "sum", "sum_over_time", "time", "timestamp", "topk",
    "bottomk", "vector",
}  # fmt: skip
KEYWORDS = {"and", "or", "unless", "bool", "offset", "by", "without", "on", "ignoring"}
SEED = {  # seed name -> a sample name it must export
    "checkpoint_duration_ms": "streamforge_checkpoint_duration_ms_bucket",
    "checkpoint_failure_count": "streamforge_checkpoint_failure_count_total",
    "source_latency_ms": "streamforge_source_latency_ms_bucket",
    "dlq_event_count": "streamforge_dlq_event_count_total",
    "restarts": "streamforge_restarts_total",
}
EXTRA = {
    "streamforge_checkpoint_duration_ms_sum",
    "streamforge_checkpoint_duration_ms_count",
    "streamforge_checkpoints_completed_total",
    "streamforge_checkpoint_size_bytes",
    "streamforge_last_checkpoint_timestamp_seconds",
    "streamforge_resume_token_age_seconds",
    "streamforge_late_events_total",
    "streamforge_state_evictions_total",
    "streamforge_savepoints",
    "streamforge_sink_retries_total",
}


def _registry_metrics() -> list[MetricWrapperBase]:
    objs = (getattr(metrics, n) for n in metrics.__all__)
    return [o for o in objs if isinstance(o, MetricWrapperBase)]


@pytest.fixture(scope="module")
def exported() -> dict[str, set[str]]:
    """Exported sample name -> label names (besides `le`/`quantile`)."""
    touched = []
    for metric in _registry_metrics():
        values = tuple(f"contract-{n}" for n in metric._labelnames)
        metric.labels(*values)
        touched.append((metric, values))
    try:
        text = generate_latest(metrics.REGISTRY).decode()
    finally:
        for metric, values in touched:
            metric.remove(*values)
    out: dict[str, set[str]] = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            if s.name.startswith("streamforge_"):
                out.setdefault(s.name, set()).update(set(s.labels) - {"le", "quantile"})
    return out


def promql_names(expr: str) -> set[str]:
    """Metric names selected by a PromQL expression; raises on unknown functions."""
    e = re.sub(r'"(?:[^"\\]|\\.)*"', '""', expr)
    e = re.sub(r"\{[^}]*\}", " ", e)
    e = re.sub(r"\[[^\]]*\]", " ", e)
    e = re.sub(r"\b(by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)", " ", e)
    names = set()
    for m in re.finditer(r"(?<![\w.$])[A-Za-z_:][\w:]*", e):
        tok = m.group(0)
        if e[m.end() :].lstrip().startswith("("):
            if tok not in FUNCTIONS:
                raise ValueError(f"unknown PromQL function {tok!r} in {expr!r}")
        elif tok not in KEYWORDS:
            names.add(tok)
    return names


def selector_labels(expr: str) -> Iterator[tuple[str, set[str]]]:
    """(metric, label names matched in its `{...}`) for each `metric{...}` selector."""
    for m in re.finditer(r"([A-Za-z_:][\w:]*)\s*\{([^}]*)\}", expr):
        yield m.group(1), set(re.findall(r"(\w+)\s*(?:=~|!~|!=|=)", m.group(2)))


def _rule_groups() -> list[dict[str, Any]]:
    return [g for p in sorted(RULES.glob("*_rules.yaml")) for g in yaml.safe_load(p.read_text())["groups"]]


def _recorded() -> set[str]:
    return {r["record"] for g in _rule_groups() for r in g["rules"] if "record" in r}


def _rule_exprs() -> list[str]:
    return [r["expr"] for g in _rule_groups() for r in g["rules"]]


def _dashboard() -> dict[str, Any]:
    return json.loads(DASHBOARD.read_text())


def _dashboard_exprs() -> list[str]:
    def walk(panels: list[dict[str, Any]]) -> Iterator[str]:
        for p in panels:
            yield from (t["expr"] for t in p.get("targets", []))
            yield from walk(p.get("panels", []))

    return list(walk(_dashboard()["panels"]))


def test_seed_metrics_are_exported_with_conventional_suffixes(exported: dict[str, set[str]]) -> None:
    missing = {seed: name for seed, name in SEED.items() if name not in exported}
    assert missing == {}
    assert EXTRA - set(exported) == set()


def test_every_metric_is_labelled_by_pipeline() -> None:
    unlabelled = [m._name for m in _registry_metrics() if "pipeline" not in m._labelnames]
    assert unlabelled == []


def test_promql_name_extraction() -> None:
    """The extractor finds names behind functions, matchers, ranges and by-clauses."""
    expr = 'histogram_quantile(0.99, sum by (pipeline, le) (rate(a_bucket{kind="x"}[5m]))) > 1e3 and on (pipeline) b:c offset 5m'
    assert promql_names(expr) == {"a_bucket", "b:c"}
    assert promql_names('time() - max by (p) (x{p=~"$pipeline"} > 0)') == {"x"}
    with pytest.raises(ValueError, match="unknown PromQL function"):
        promql_names("rat(x[5m])")


def test_rules_refer_only_to_exported_or_recorded_metrics(exported: dict[str, set[str]]) -> None:
    known = set(exported) | _recorded()
    used = set().union(*(promql_names(e) for e in _rule_exprs()))
    assert used - known == set()
    assert used & set(exported), "the rules select no exported metric at all"


def test_dashboard_refers_only_to_exported_or_recorded_metrics(exported: dict[str, set[str]]) -> None:
    exprs = _dashboard_exprs()
    assert len(exprs) >= 10
    used = set().union(*(promql_names(e) for e in exprs))
    assert used - (set(exported) | _recorded()) == set()


def test_selectors_match_labels_the_metric_has(exported: dict[str, set[str]]) -> None:
    for expr in _rule_exprs() + _dashboard_exprs():
        for name, labels in selector_labels(expr):
            if name in exported:
                assert labels <= exported[name], f"{name} has no label {labels - exported[name]} ({expr})"


def test_every_registry_metric_is_on_the_dashboard(exported: dict[str, set[str]]) -> None:
    used = set().union(*(promql_names(e) for e in _dashboard_exprs()))
    recordings = {r["record"]: r["expr"] for g in _rule_groups() for r in g["rules"] if "record" in r}
    shown = used.union(*(promql_names(recordings[n]) for n in used & set(recordings)))
    families = {m._name for m in _registry_metrics()}
    missing = {f for f in families if not any(s.startswith(f) for s in shown)}
    assert missing == set()


def test_dashboard_has_datasource_and_pipeline_variables(exported: dict[str, set[str]]) -> None:
    dash = _dashboard()
    variables = {v["name"]: v for v in dash["templating"]["list"]}
    assert variables["datasource"]["type"] == "datasource"
    assert variables["datasource"]["query"] == "prometheus"
    pipeline = variables["pipeline"]
    assert pipeline["datasource"]["uid"] == "${datasource}"
    assert 'label_values({__name__=~"streamforge_.*"}, pipeline)' == pipeline["definition"]
    for expr in _dashboard_exprs():
        assert 'pipeline=~"$pipeline"' in expr, expr


def test_every_registry_metric_is_set_somewhere_in_the_code() -> None:
    """A metric no module touches would leave its panel and alert silently empty."""
    sources = [
        p.read_text()
        for pkg in ("dataflows", "recovery", "streamforge_ops")
        for p in (ROOT / pkg).rglob("*.py")
        if p != ROOT / "dataflows" / "metrics.py"
    ]
    names = [n for n in metrics.__all__ if isinstance(getattr(metrics, n), MetricWrapperBase)]
    unused = [n for n in names if not any(re.search(rf"\b{n}\b", text) for text in sources)]
    assert unused == []


def test_dashboard_panels_are_well_formed() -> None:
    panels = _dashboard()["panels"]
    ids = [p["id"] for p in panels]
    assert len(ids) == len(set(ids))
    for p in panels:
        if p["type"] == "row":
            continue
        assert p["datasource"] == {"type": "prometheus", "uid": "${datasource}"}, p["title"]
        assert p["targets"] and p["description"], p["title"]
        assert len({t["refId"] for t in p["targets"]}) == len(p["targets"])
        grid = p["gridPos"]
        assert grid["x"] + grid["w"] <= 24


def test_a_step_is_labelled_step_everywhere() -> None:
    """One name per idea: the label naming a dataflow step is `step` (never `stage` or `sink`)."""
    for m in _registry_metrics():
        assert not {"stage", "sink"} & set(m._labelnames), f"{m._name}: {m._labelnames}"
    text = "\n".join(_rule_exprs() + _dashboard_exprs())
    assert not re.search(r"\b(stage|sink)\b\s*(=|,|\))", text), "rules or dashboard still group by stage/sink"


def test_a_sinks_dead_letter_and_counter_carry_the_sinks_full_step_id(tmp_path: Path) -> None:
    """The Kafka sink labels its dead letters with the Bytewax step id it was built for."""
    from dataflows.config import Config
    from dataflows.connectors.dlq import read_dead_letters
    from dataflows.connectors.kafka import kafka_sink_from_config

    dlq = tmp_path / "dlq.jsonl"
    sink_cfg = {"brokers": ["127.0.0.1:1"], "topic": "out", "check": False, "partitions": 1}
    cfg = Config({"sink": sink_cfg, "dlq": {"path": str(dlq)}}, "t.yaml")
    sink = kafka_sink_from_config(cfg.section("sink"), "labels")
    before = metrics.REGISTRY.get_sample_value(
        "streamforge_dlq_event_count_total", {"pipeline": "labels", "step": "labels.sink", "error_code": "UNSUPPORTED_TYPE"}
    ) or 0.0
    sink.build_part("labels.sink", "00000", None).write_batch([("k", object())])  # type: ignore[attr-defined]
    after = metrics.REGISTRY.get_sample_value(
        "streamforge_dlq_event_count_total", {"pipeline": "labels", "step": "labels.sink", "error_code": "UNSUPPORTED_TYPE"}
    )
    assert after == before + 1
    assert [d.stage for d in read_dead_letters(dlq)] == ["labels.sink"]
