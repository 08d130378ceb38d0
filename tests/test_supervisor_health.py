"""Health/readiness rules, the checkpoint clock and the restart backoff (pure logic)
plus the HTTP server on a real socket."""

from __future__ import annotations

import json

from prometheus_client.parser import text_string_to_metric_families

from streamforge_ops.health import HealthServer, HealthState
from streamforge_ops.scheduler import Backoff, CheckpointClock, Every
from tests.supervisor_harness import http_get


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_healthz_fails_when_checkpoints_stop_progressing() -> None:
    clock = FakeClock()
    h = HealthState(unhealthy_after=30.0, clock=clock)
    assert h.health()[0]
    clock.now += 31  # no checkpoint since start
    ok, body = h.health()
    assert not ok and "no checkpoint yet" in body["problems"][0]
    h.checkpoint_done()
    assert h.health()[0]
    clock.now += 29
    assert h.health()[0]
    clock.now += 2
    ok, body = h.health()
    assert not ok and body["last_checkpoint_age_seconds"] == 31.0


def test_healthz_fails_on_crash_loop_and_recovers_after_window() -> None:
    clock = FakeClock()
    h = HealthState(unhealthy_after=1e9, crash_loop_restarts=3, crash_loop_window=60.0, clock=clock)
    for _ in range(2):
        h.restarted()
    assert h.health()[0]
    h.restarted()
    ok, body = h.health()
    assert not ok and "crash loop" in body["problems"][0]
    clock.now += 61
    assert h.health()[0]


def test_readyz_needs_restore_and_running_child() -> None:
    h = HealthState(unhealthy_after=10.0)
    assert not h.readiness()[0]
    h.update(restored=True, restore_choice="checkpoint")
    assert not h.readiness()[0]
    h.update(child_pid=1234)
    ready, body = h.readiness()
    assert ready and body == {"ready": True, "restored": True, "restore": "checkpoint", "child_pid": 1234}


def test_unreachable_peers_fail_readiness_not_liveness() -> None:
    """A pod whose peer supervisors are down is alive (restarting it cannot bring them back:
    a liveness failure would only restart healthy pods while one peer is away), but not ready;
    both bodies name the peers."""
    h = HealthState(unhealthy_after=10.0)
    h.update(restored=True, child_pid=123, peers_unreachable=["process 1 (10.0.0.2:9100)"])
    healthy, body = h.health()
    assert healthy and body["peers_unreachable"] == ["process 1 (10.0.0.2:9100)"]
    ready, rbody = h.readiness()
    assert not ready and rbody["peers_unreachable"] == ["process 1 (10.0.0.2:9100)"]
    h.update(peers_unreachable=[])
    assert h.readiness()[0]


def test_http_endpoints_on_a_random_port() -> None:
    h = HealthState(unhealthy_after=10.0)
    server = HealthServer(h, "127.0.0.1", 0).start()
    try:
        assert server.port > 0
        code, body = http_get(server.port, "/readyz")
        assert code == 503 and json.loads(body)["ready"] is False
        h.update(restored=True, child_pid=1)
        assert http_get(server.port, "/readyz")[0] == 200
        assert http_get(server.port, "/healthz")[0] == 200
        code, text = http_get(server.port, "/metrics")
        names = {f.name for f in text_string_to_metric_families(text)}
        assert code == 200 and "streamforge_restarts" in names
        assert http_get(server.port, "/nope")[0] == 404
    finally:
        server.stop()


def test_checkpoint_clock_interval_min_pause_and_in_flight() -> None:
    c = CheckpointClock(interval=10.0, min_pause=5.0, last_start=0.0)
    assert not c.due(9.9) and c.due(10.0)
    c.started(10.0)
    assert not c.due(30.0)  # one at a time
    c.ended(28.0)  # took 18 s: next start waits for min-pause after the end
    assert not c.due(32.9) and c.due(33.0)


def test_every_and_backoff() -> None:
    e = Every(interval=5.0, last=0.0)
    assert not e.due(4.0) and e.due(5.0) and not e.due(6.0)
    b = Backoff(initial=1.0, max=8.0, multiplier=2.0)
    assert [b.next_delay(0.1) for _ in range(5)] == [1.0, 2.0, 4.0, 8.0, 8.0]
    assert b.next_delay(ran_for=9.0) == 1.0  # ran stably: reset
