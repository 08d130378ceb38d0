"""The chaos harness (scripts/chaos.py): its schedule draw, its checker, its fault points, a short run.

The checker is fed outputs known to be wrong (a lost record, a duplicate, a
record written differently, a dead letter too many or missing) and must report
each: a checker that cannot fail proves nothing. The short seeded run drives
the real harness (Tansu, moto behind the fault proxy, `streamforge run`) over
one run of each workload and must come back clean; a second one runs the opt-in
cluster workload (`--processes 2`) with a kill of one process's child.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections import Counter
from pathlib import Path
from typing import Any

import pytest

from scripts.chaoslib.checker import Record, check
from scripts.chaoslib.schedule import (
    ALL_WORKLOADS,
    CLUSTER,
    FAULT_KINDS,
    WORKLOADS,
    Schedule,
    applicable_kinds,
    draw_schedule,
    parse_workloads,
)

REPO = Path(__file__).resolve().parents[1]

# -- schedules ---------------------------------------------------------------


def test_schedule_is_a_function_of_seed_and_run() -> None:
    assert draw_schedule(1, 7) == draw_schedule(1, 7)
    assert draw_schedule(1, 7) != draw_schedule(2, 7)
    s = draw_schedule(3, 11)
    assert Schedule.from_json(s.to_json()) == s


def test_schedules_cover_every_workload_and_every_kind() -> None:
    assert {draw_schedule(1, r).workload for r in range(3)} == set(WORKLOADS)
    drawn: Counter[str] = Counter()
    for run in range(100):
        s = draw_schedule(1, run)
        assert 1 <= len(s.faults) <= 3
        assert all(f.kind in applicable_kinds(s.workload) for f in s.faults), s
        drawn.update(s.kinds())
    assert set(drawn) == {k for w in WORKLOADS for k in applicable_kinds(w)} == set(FAULT_KINDS) - {"process-kill"}
    assert min(drawn.values()) >= 5, drawn


# sha256 of the default draws (seeds 1, 2, 7; runs 0-119) as they were before opt-in workloads
# existed (commit ca25671): a 100-run of a snapshot must replay run for run.
DEFAULT_DRAWS_SHA256 = "5b55e6c9465d0b59863100b19ec22e5a694231993adecf042968b98f35cb7962"


def test_default_draws_are_unchanged_by_opt_in_workloads() -> None:
    import hashlib

    text = "".join(draw_schedule(seed, r).to_json() for seed in (1, 2, 7) for r in range(120))
    assert hashlib.sha256(text.encode()).hexdigest() == DEFAULT_DRAWS_SHA256
    assert all(draw_schedule(1, r) == draw_schedule(1, r, WORKLOADS) for r in range(40))
    assert CLUSTER not in {draw_schedule(1, r).workload for r in range(200)}


def test_cluster_draws_cover_its_kinds_and_kill_one_process() -> None:
    drawn: Counter[str] = Counter()
    for run in range(100):
        s = draw_schedule(1, run, (CLUSTER,))
        assert s.workload == CLUSTER and all(f.kind in applicable_kinds(CLUSTER) for f in s.faults), s
        drawn.update(s.kinds())
    assert set(drawn) == set(applicable_kinds(CLUSTER))
    assert {"process-kill", "supervisor-kill", "child-kill-checkpoint-copy",
            "child-kill-checkpoint-upload"} <= set(drawn)
    assert draw_schedule(1, 0, (CLUSTER,)).kinds() == ["process-kill"]  # the short run below
    kills = [f.params["process"] for r in range(100) for f in draw_schedule(1, r, (CLUSTER,)).faults
             if f.kind == "process-kill"]
    assert set(kills) == {0, 1}
    mixed = {draw_schedule(1, r, ALL_WORKLOADS).workload for r in range(20)}
    assert mixed == set(ALL_WORKLOADS)


def test_child_fault_points_count_per_process_on_a_cluster() -> None:
    """kafka.commit fires in a Bytewax child, which counts its own hits: on 2 processes the
    cluster's N-th commit is each process's ceil(N/2)-th (run 7 of the cluster 10-run drew
    nth 7 and never reached it per process); supervisor points and one process: unchanged."""
    from scripts.chaoslib.runner import _armed
    from scripts.chaoslib.schedule import Fault

    commit, upload = Fault("kafka-commit-kill", 0.3, {"nth": 7}), Fault("child-kill-checkpoint-upload", 0.3, {"nth": 7})
    assert _armed(commit, 1) == "kafka.commit@7=kill" and _armed(commit, 2) == "kafka.commit@4=kill"
    assert _armed(upload, 1) == _armed(upload, 2) == "checkpoint.upload@7=kill-children"


def test_replay_command_reproduces_the_schedule() -> None:
    """A failure's replay: `--run K` draws the same schedule only with the same --workloads, and
    a --replay-schedule run is replayed by its JSON (it printed `--run 9` before: another draw)."""
    sys.path.insert(0, str(REPO / "scripts"))
    from chaos import parse_args, replay_command, schedules_of

    for workloads in (WORKLOADS, (CLUSTER,)):
        cmd = replay_command(draw_schedule(1, 9, workloads), workloads, drawn=True)
        assert schedules_of(parse_args(cmd.split()[2:])) == [draw_schedule(1, 9, workloads)], cmd
    edited = Schedule(1, 9, "kafka-exactly-once", ())
    cmd = replay_command(edited, WORKLOADS, drawn=False)
    assert schedules_of(parse_args(["--replay-schedule", edited.to_json()])) == [edited]
    assert cmd == f"python scripts/chaos.py --replay-schedule '{edited.to_json()}'"


def test_workloads_flag_is_checked() -> None:
    assert parse_workloads(f" {CLUSTER},file ") == ("file", CLUSTER)
    for bad in ("nope", ",", "file,nope"):
        with pytest.raises(ValueError, match="--workloads"):
            parse_workloads(bad)
    proc = subprocess.run([sys.executable, "scripts/chaos.py", "--workloads", "nope"], cwd=REPO,
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 2 and "--workloads: nope" in proc.stderr and "Traceback" not in proc.stderr


# -- the checker -------------------------------------------------------------

BASE = [Record("e1", "a"), Record("e2", "b"), Record("e3", "c")]


def test_checker_passes_the_same_output_in_any_order() -> None:
    v = check(BASE, list(reversed(BASE)), baseline_dlq=["d1"], got_dlq=["d1"])
    assert v.ok and (v.lost, v.duplicated, v.divergent) == (0, 0, 0)


def test_checker_reports_a_lost_record() -> None:
    v = check(BASE, BASE[:2])
    assert (v.lost, v.duplicated, v.divergent) == (1, 0, 0) and not v.ok
    assert "e3" in v.what()


def test_checker_reports_a_duplicate_unless_at_least_once() -> None:
    v = check(BASE, [*BASE, Record("e2", "b")])
    assert (v.lost, v.duplicated, v.divergent) == (0, 1, 0)
    alo = check(BASE, [*BASE, Record("e2", "b")], exactly_once=False)
    assert alo.ok and alo.redelivered == 1


def test_checker_reports_a_divergent_record_even_at_least_once() -> None:
    got = [BASE[0], Record("e2", "B"), BASE[2]]
    for exactly_once in (True, False):
        v = check(BASE, got, exactly_once=exactly_once)
        assert (v.lost, v.duplicated, v.divergent) == (0, 0, 1), exactly_once
    v = check(BASE, [*BASE, Record("e9", "z")])  # a record the fault-free run never wrote
    assert v.duplicated == 1 and not v.ok


def test_checker_compares_the_dlq() -> None:
    missing = check(BASE, BASE, baseline_dlq=["d1", "d2"], got_dlq=["d1"])
    assert (missing.lost, missing.dlq_missing) == (1, 1)
    diverted = check(BASE, BASE[:2], baseline_dlq=["d1"], got_dlq=["d1", "sink-write-e3"])
    assert (diverted.lost, diverted.divergent, diverted.dlq_unexpected) == (1, 1, 1)
    assert check(BASE, BASE, baseline_dlq=["d1"], got_dlq=["d1", "d1"], exact_dlq=False).ok
    assert not check(BASE, BASE, baseline_dlq=["d1"], got_dlq=["d1", "d1"]).ok


# -- fault points --------------------------------------------------------------

_POINT_SCRIPT = """
from dataflows.faults import fault_point
for i in range(5):
    fault_point("p")
    print(i, flush=True)
"""


def _run_point(env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-c", _POINT_SCRIPT], cwd=REPO, capture_output=True, text=True,
                          env={**os.environ, "PYTHONPATH": str(REPO), **env}, timeout=60)


def test_strikes_a_fast_run_passes_in_one_poll_land_in_schedule_order() -> None:
    """Run 8 of seed 1 (kafka-exactly-once): broker-pause due at 22% of the output, broker-restart
    at 49%. A run fast enough to pass both between two progress polls used to queue the later
    strike first (each inserted at the front): the restart stopped the broker, then the pause
    found no broker process and the harness died (AssertionError in `Services.pause`)."""
    from scripts.chaoslib.runner import _Action, take_due

    schedule = draw_schedule(1, 8)
    assert schedule.kinds() == ["broker-pause", "broker-restart"]
    strikes = [_Action(f.at * 747, f.kind, lambda: True, kind=f.kind) for f in schedule.faults]
    later = _Action(0.9 * 747, "later", lambda: True)
    pending = sorted([*strikes, later])
    timeline: list[_Action] = []
    timeline[:0] = take_due(pending, 500, now=12.5)  # the first poll after both thresholds
    assert [a.label for a in timeline] == ["broker-pause", "broker-restart"]
    assert all(a.at == 12.5 for a in timeline) and pending == [later]
    assert take_due(pending, 600, now=13.0) == [] and pending == [later]


def test_fault_point_kills_at_the_nth_hit_once_per_mark_file(tmp_path: Path) -> None:
    assert _run_point({}).stdout.split() == ["0", "1", "2", "3", "4"]  # unarmed: a no-op
    mark = tmp_path / "fired"
    env = {"STREAMFORGE_FAULT_POINT": "p@3", "STREAMFORGE_FAULT_MARK": str(mark)}
    first = _run_point(env)
    assert first.returncode == -9 and first.stdout.split() == ["0", "1"]
    assert mark.read_text().split()[0] == "p"
    assert _run_point(env).returncode == 0  # fired once: a restarted process is not killed again


def test_fault_point_spec_errors_name_the_variable() -> None:
    from dataflows.faults import parse_spec

    assert parse_spec("a@2=kill-children, b") == {"a": (2, "kill-children"), "b": (1, "kill")}
    with pytest.raises(ValueError, match="STREAMFORGE_FAULT_POINT"):
        parse_spec("a=explode")


# -- a short seeded run --------------------------------------------------------


def test_short_chaos_run_of_each_workload_is_clean(tmp_path: Path) -> None:
    """Runs 0-2 of seed 1 (one per workload, see draw_schedule) with small inputs."""
    out = tmp_path / "chaos.json"
    proc = subprocess.run(
        [sys.executable, "scripts/chaos.py", "--runs", "3", "--seed", "1", "--records", "400",
         "--json", "--out", str(out)],
        cwd=REPO, capture_output=True, text=True, timeout=600,
    )
    report = json.loads(proc.stdout) if proc.stdout.strip() else json.loads(out.read_text())
    assert report["runs"] == 3, proc.stderr[-3000:]
    assert sum(report["faults"].values()) >= 3
    assert (report["lost"], report["duplicated"], report["divergent"], report["stuck"]) == (0, 0, 0, 0), \
        json.dumps(report["failures"], indent=1)
    assert proc.returncode == 0 and report["failures"] == []


def test_short_cluster_chaos_run_is_clean(tmp_path: Path) -> None:
    """Run 0 of seed 1 over the cluster workload: SIGKILL of one of the 2 processes' children
    (draw_schedule(1, 0, (CLUSTER,))), output identical to the one-process fault-free run.
    4000 records: the strike is due at 42% of the output, and with 1500 the whole input fits
    in the cluster's first 1 s epoch. The harness's progress must count uncommitted records
    (test_progress_counts_the_records_of_an_open_transaction): a poll of the last stable offset
    made the kill come due when the children were exiting, and it never struck."""
    out = tmp_path / "chaos.json"
    proc = subprocess.run(
        [sys.executable, "scripts/chaos.py", "--workloads", CLUSTER, "--runs", "1", "--seed", "1",
         "--records", "4000", "--json", "--out", str(out)],
        cwd=REPO, capture_output=True, text=True, timeout=600,
    )
    report = json.loads(proc.stdout) if proc.stdout.strip() else json.loads(out.read_text())
    assert report["runs"] == 1, proc.stderr[-3000:]
    assert report["landed"] == {"process-kill": 1}, proc.stderr[-3000:]
    assert (report["lost"], report["duplicated"], report["divergent"], report["stuck"]) == (0, 0, 0, 0), \
        json.dumps(report["failures"], indent=1)
    assert proc.returncode == 0 and report["failures"] == []
    assert f"[{CLUSTER}]" in proc.stderr and "[kafka-exactly-once] fault-free" in proc.stderr


# -- the fault proxy's intermittent faults (used by the store-* kinds) ----------


def test_fault_proxy_probability_faults_some_requests_over_real_http(fault_s3: Any) -> None:
    """`probability` faults a seeded share of the requests; the others reach moto unchanged."""
    import http.client
    from urllib.parse import urlparse

    proxy = fault_s3.proxy
    proxy.set_mode("slowdown", probability=0.5)
    port = urlparse(proxy.endpoint_url).port
    statuses = []
    for _ in range(40):
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
        conn.request("GET", f"/{fault_s3.bucket}?list-type=2")
        statuses.append(conn.getresponse().status)
        conn.close()
    proxy.set_mode("pass")
    assert set(statuses) == {200, 503}, statuses
    assert proxy.faulted_by_mode["slowdown"] == statuses.count(503)


# -- the harness's progress poll -----------------------------------------------


def test_progress_counts_the_records_of_an_open_transaction(make_topic: Any, kafka_broker: Any,
                                                            tmp_path: Path) -> None:
    """An exactly-once run keeps a transaction open nearly all the time, so a progress poll that
    reads the last stable offset (read_committed, the librdkafka default: KIP-98's ListOffsets
    returns the LSO, the first offset of the oldest open transaction) saw 0 for most of a cluster
    run, and its process-kill came due only after the children had exited (CI, stop 21:
    "due, not struck ... progress 3729/3731"). Progress is every record written."""
    from confluent_kafka import Producer

    from scripts.chaoslib.workloads import OUT_PARTITIONS, Workload, WorkloadInput

    topic = make_topic(partitions=OUT_PARTITIONS)
    producer = Producer({"bootstrap.servers": kafka_broker.bootstrap, "transactional.id": f"progress-{topic}"})
    producer.init_transactions(10)
    producer.begin_transaction()
    for p in range(OUT_PARTITIONS):  # one record each: Tansu reports the last batch base offset + 1
        producer.produce(topic, b"x", partition=p)
    assert producer.flush(10) == 0
    w = Workload(WorkloadInput("kafka-exactly-once", "in", 0), services=None,  # type: ignore[arg-type]
                 broker=kafka_broker, root=tmp_path, tag="t", out_topic=topic)
    try:
        assert w.progress() == OUT_PARTITIONS  # written, not yet committed
        producer.commit_transaction(10)
        assert w.progress() >= OUT_PARTITIONS  # Kafka adds each partition's commit marker
    finally:
        w.close()
