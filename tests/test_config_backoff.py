"""One backoff: one formula (`dataflows.retry.RetryPolicy`) and one spelling of its keys.

Every backoff block is `<block>.initial-backoff`, `<block>.max-backoff`,
`<block>.multiplier` (and `jitter`, `max-attempts` where they apply): a sink's
`retry`, `checkpoints.retry`, a MongoDB source's `reconnect`, the supervisor's
`recovery.restart`. The spellings before issue 11 (`recovery.restart-backoff`,
`recovery.max-restart-backoff`, `recovery.restart-multiplier`,
`source.reconnect-initial-backoff`, `source.reconnect-max-backoff`) still work with a
deprecation warning naming the new key; both spellings at once are refused.
"""

from __future__ import annotations

import logging

import pytest

from dataflows.config import Config, ConfigError
from dataflows.connectors.mongo import mongo_source_settings
from dataflows.retry import RetryPolicy
from streamforge_ops.scheduler import Backoff
from streamforge_ops.settings import read_settings

MONGO = {"type": "mongo", "uri": "mongodb://127.0.0.1:1", "database": "d", "collections": ["c"]}


def _settings(recovery: dict[str, object]) -> object:
    return read_settings(Config({"pipeline": {"name": "p"}, "recovery": recovery}, "t.yaml")).recovery


def test_the_supervisor_restart_backoff_uses_the_one_spelling() -> None:
    rec = _settings({"restart": {"initial-backoff": "2s", "max-backoff": "30s", "multiplier": 3}})
    assert (rec.restart_initial_backoff_s, rec.restart_max_backoff_s, rec.restart_multiplier) == (2.0, 30.0, 3.0)


def test_the_old_restart_spellings_work_with_a_deprecation_warning(caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.WARNING):
        rec = _settings({"restart-backoff": "2s", "max-restart-backoff": "30s", "restart-multiplier": 3})
    assert (rec.restart_initial_backoff_s, rec.restart_max_backoff_s, rec.restart_multiplier) == (2.0, 30.0, 3.0)
    text = caplog.text
    assert "recovery.restart-backoff is deprecated: use recovery.restart.initial-backoff" in text
    assert "recovery.max-restart-backoff is deprecated: use recovery.restart.max-backoff" in text


def test_both_spellings_at_once_are_refused_naming_both() -> None:
    with pytest.raises(ConfigError, match=r"recovery\.restart-backoff.*recovery\.restart\.initial-backoff"):
        _settings({"restart-backoff": "2s", "restart": {"initial-backoff": "1s"}})


def test_a_mongo_source_reconnect_block_uses_the_one_spelling(caplog: pytest.LogCaptureFixture) -> None:
    cfg = Config({"source": {**MONGO, "reconnect": {"initial-backoff": "20ms", "max-backoff": "2s"}}}, "t")
    s = mongo_source_settings(cfg.section("source"), "p")
    assert (s.initial_backoff_s, s.max_backoff_s) == (0.02, 2.0)
    old = Config({"source": {**MONGO, "reconnect-initial-backoff": "30ms", "reconnect-max-backoff": "3s"}}, "t")
    with caplog.at_level(logging.WARNING):
        s = mongo_source_settings(old.section("source"), "p")
    assert (s.initial_backoff_s, s.max_backoff_s) == (0.03, 3.0)
    assert "source.reconnect-initial-backoff is deprecated: use source.reconnect.initial-backoff" in caplog.text


def test_the_restart_delay_is_the_retry_policys_formula() -> None:
    """`scheduler.Backoff` is no second formula: its delays are `RetryPolicy.backoff` without jitter,
    reset after a stable run of `max` seconds."""
    policy = RetryPolicy(initial_backoff_s=0.5, max_backoff_s=5.0, multiplier=3.0, jitter=0.0)
    b = Backoff(0.5, 5.0, 3.0)
    assert [b.next_delay(0.0) for _ in range(4)] == [policy.backoff(n) for n in range(4)]
    assert b.next_delay(5.0) == policy.backoff(0)  # ran for `max`: the count starts again
    assert b.policy == policy
