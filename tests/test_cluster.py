"""`streamforge run --processes N` and `--process-id K --addresses ...`: one Bytewax cluster.

Real processes throughout: the CLI (`python -m streamforge_ops run`), Bytewax's cluster mode
over loopback TCP, the real Tansu broker (tests/fixtures/kafka.py) for Kafka -> Kafka. Every
wait is a condition polled with a deadline (tests.supervisor_harness.wait_for).

The orders input is split over 4 source partitions by order id (`_part`), so each key's
events stay in order and the output cannot depend on how the partitions interleave; the
dedup TTL is far above the input's event-time span, so no expiry depends on progress.
"""

from __future__ import annotations

import json
import os
import signal
import zlib
from collections import Counter
from pathlib import Path
from typing import Any

import pytest
import yaml
from confluent_kafka import Producer

from dataflows.generate import generate_orders
from recovery.placement import owned, owner
from streamforge_ops.cli import CliError, main
from streamforge_ops.cluster import cluster_from_args, parse_addresses
from streamforge_ops.restoring import has_local_progress
from tests.fixtures.kafka import create_topic, free_port, read_topic
from tests.supervisor_harness import (
    Workspace,
    assert_exactly_once,
    http_get,
    read_rows,
    sample,
    scrape,
    wait_for,
)

PARTS = 4
RECORDS = 1200
FAST = {
    "recovery": {"partitions": PARTS, "snapshot-interval": "1s", "backup-interval": "40s",
                 "restart-backoff": "0.2s", "stop-grace": "10s", "compact-interval": "1h"},
    "checkpoints": {"interval": "1h", "timeout": "30s", "min-pause": "0s"},
    "metrics": {"port": 0, "host": "127.0.0.1"},
}


# -- placement and flags (pure) ----------------------------------------------------------


def test_placement_spreads_every_partition_to_exactly_one_process() -> None:
    for processes in (1, 2, 3, 5):
        shares = [owned(k, processes, 8) for k in range(processes)]
        assert sorted(p for share in shares for p in share) == list(range(8))
        assert all(owner(p, processes) == k for k, share in enumerate(shares) for p in share)
    assert owned(0, 2, 4) == [0, 2] and owned(1, 2, 4) == [1, 3]
    assert owned(2, 3, 2) == []  # more processes than partitions: the last holds none
    with pytest.raises(ValueError):
        owned(2, 2, 4)


@pytest.mark.parametrize(("argv", "message"), [
    (["--processes", "0"], "--processes must be >= 1, got 0"),
    (["--process-id", "2", "--addresses", "a:1;b:2"], "--process-id 2 is not in 0..1"),
    (["--process-id", "-1", "--addresses", "a:1;b:2"], "--process-id -1 is not in 0..1"),
    (["--process-id", "0", "--addresses", "a:1;a:1"], "a:1 listed more than once"),
    (["--process-id", "0", "--addresses", "a:1;b"], "'b' is not host:port"),
    (["--process-id", "0", "--addresses", "a:1;b:99999"], "'b:99999' is not host:port"),
    (["--process-id", "x", "--addresses", "a:1"], "'x' is not an integer or 'ordinal'"),
    (["--process-id", "0"], "needs --addresses"),
    (["--addresses", "a:1;b:2"], "needs --process-id"),
    (["--processes", "3", "--process-id", "0", "--addresses", "a:1;b:2"], "--processes 3 but"),
])
def test_bad_cluster_flags_exit_2_with_one_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], argv: list[str], message: str
) -> None:
    cfg = Workspace(tmp_path).config()
    assert main(["run", "--config", str(cfg), *argv]) == 2
    err = capsys.readouterr().err
    assert err.startswith("streamforge: error: ") and message in err and "Traceback" not in err
    assert not (tmp_path / "recovery").exists(), "nothing starts"


def test_flags_from_env_and_pod_ordinal() -> None:
    env = {"STREAMFORGE_PROCESS_ID": "1", "STREAMFORGE_ADDRESSES": "sf-0.sf:2101;sf-1.sf:2101"}
    c = cluster_from_args(None, None, None, env)
    assert c is not None and c.local == (1,) and c.processes == 2 and not c.holds_all
    assert c.bytewax_args(1) == ["-i", "1", "-a", "sf-0.sf:2101;sf-1.sf:2101"]
    assert c.peers() == [(0, "sf-0.sf")]
    pod = cluster_from_args(None, "ordinal", "h0:1;h1:1;h2:1", {}, hostname="orders-2")
    assert pod is not None and pod.local == (2,)
    with pytest.raises(CliError, match="does not end in -N"):
        cluster_from_args(None, "ordinal", "h0:1", {}, hostname="orders")
    local = cluster_from_args(3, None, None, {})
    assert local is not None and local.holds_all and local.loopback
    assert len(set(local.addresses)) == 3 and local.renewed().addresses != local.addresses
    assert cluster_from_args(1, None, None, {}) is None
    assert parse_addresses(" a:1 ; b:2 ;") == ("a:1", "b:2")


# -- the orders pipeline, file -> file ------------------------------------------------------


def _part(line: bytes, index: int) -> int:
    """The input partition of a line: by order id (per-key order kept), else by position."""
    try:
        key = json.loads(line).get("order_id")
    except (ValueError, AttributeError):
        key = None
    return zlib.crc32(str(key).encode()) % PARTS if isinstance(key, str) else index % PARTS


def _orders_lines() -> list[bytes]:
    return generate_orders(RECORDS, seed=1313).lines


def _write_inputs(root: Path) -> list[Path]:
    """The orders lines over PARTS files (one source partition each), by `_part`."""
    root.mkdir(parents=True, exist_ok=True)
    files = [root / f"in-{p}.jsonl" for p in range(PARTS)]
    shards: list[list[bytes]] = [[] for _ in range(PARTS)]
    for i, line in enumerate(_orders_lines()):
        shards[_part(line, i)].append(line)
    for path, lines in zip(files, shards, strict=True):
        path.write_bytes(b"".join(line + b"\n" for line in lines))
    return files


def _orders_file_run(root: Path, files: list[Path], processes: int) -> dict[str, Counter[str]]:
    """The orders pipeline on `files` under `streamforge run --processes N` (the event ids
    name the input files, so every run reads the same ones)."""
    root.mkdir(parents=True, exist_ok=True)
    out = root / "out"
    cfg = yaml.safe_load((Path(__file__).parents[1] / "config/orders.yaml").read_text())
    cfg["source"] = {"type": "file", "path": [str(f) for f in files], "tail": False}
    cfg["sink"] = {"type": "file", "path": str(out / "table.jsonl"), "changes-path": str(out / "changes.jsonl")}
    cfg["dlq"] = {"type": "file", "path": str(out / "dlq.jsonl")}
    cfg["patterns"]["dedup"]["ttl"] = "100000h"
    cfg["checkpoints"] = {**cfg["checkpoints"], "dir": f"file://{root / 'store'}"}
    cfg["savepoints"] = {**cfg["savepoints"], "dir": f"file://{root / 'store'}"}
    for section, values in FAST.items():
        cfg.setdefault(section, {}).update(values)
    cfg["recovery"]["dir"] = str(root / "recovery")
    config = root / "orders.yaml"
    config.write_text(yaml.safe_dump(cfg))
    ws = Workspace(root)
    code, _, err = ws.finish(ws.start("--processes", str(processes), config=config), timeout=180)
    assert code == 0, err
    if processes > 1:
        assert f"of {processes} (pids" in err, err
    assert ws.status()["restarts"] == 0, err  # the processes of a finished flow all exit 0
    dlq = Counter(json.loads(line)["event_id"] for line in (out / "dlq.jsonl").read_text().splitlines())
    return {
        "table": Counter((out / "table.jsonl").read_text().splitlines()),
        "changes": Counter((out / "changes.jsonl").read_text().splitlines()),
        "dlq": Counter(dlq),
    }


@pytest.fixture(scope="module")
def orders_files(tmp_path_factory: pytest.TempPathFactory) -> list[Path]:
    return _write_inputs(tmp_path_factory.mktemp("orders-input"))


@pytest.fixture(scope="module")
def one_process(tmp_path_factory: pytest.TempPathFactory, orders_files: list[Path]) -> dict[str, Counter[str]]:
    return _orders_file_run(tmp_path_factory.mktemp("orders-1"), orders_files, 1)


@pytest.mark.parametrize("processes", [2, 3])
def test_orders_file_to_file_on_n_processes_is_identical_to_one(
    tmp_path: Path, orders_files: list[Path], one_process: dict[str, Counter[str]], processes: int
) -> None:
    got = _orders_file_run(tmp_path, orders_files, processes)
    assert sum(one_process["table"].values()) > 100 and one_process["dlq"], "the input exercises all outputs"
    for what in ("table", "changes", "dlq"):
        assert got[what] == one_process[what], (
            f"{what}: lost {sum((one_process[what] - got[what]).values())}, "
            f"extra {sum((got[what] - one_process[what]).values())}")
    assert all(n == 1 for n in got["dlq"].values())


# -- a crash in a local cluster ---------------------------------------------------------------


def test_kill_9_of_one_process_restarts_the_whole_cluster(tmp_path: Path) -> None:
    """kill -9 of process 1's child: the supervisor stops process 0 too, counts one restart,
    starts both again (new pids, new ports), and the output is complete and exact."""
    ws = Workspace(tmp_path, n=240)
    proc = ws.start("--processes", "2", config=ws.config(source={"tail": True, "delay": 0.05, "batch-size": 4}))
    st = wait_for(lambda: len((s := ws.status()).get("child_pids", [])) == 2 and s, what="two children")
    port, first = st["port"], st["child_pids"]
    assert st["processes"] == 2 and st["process_ids"] == [0, 1]
    wait_for(lambda: len(read_rows(ws.output)) >= 40, what="some output before the crash")
    os.kill(first[1], signal.SIGKILL)
    wait_for(lambda: sample(scrape(port), "streamforge_restarts_total", pipeline="sup") == 1,
             what="restarts_total to rise")
    st = wait_for(lambda: len(set((s := ws.status()).get("child_pids", [])) - set(first)) == 2 and s,
                  what="both processes started again")
    assert st["restarts"] == 1
    wait_for(lambda: len(read_rows(ws.output)) == 240, what="all input processed", timeout=90)
    code, out, err = ws.stop(proc, signal.SIGTERM)
    assert code == 0, err
    assert err.count("as process(es) [0, 1] of 2") == 2, err
    assert "streamforge: process 1 of 2 failed: killed by SIGKILL" in err, "not process 0's panic"
    assert_exactly_once(read_rows(ws.output), 240)


def test_local_cluster_resumes_on_another_process_count(tmp_path: Path) -> None:
    """2 -> 3 -> 1 processes on the same recovery directory (SIGTERM between runs): each run
    resumes the local partitions (the proc-K links follow the new count), the keyed running
    totals carry over and the output is exactly once."""
    ws = Workspace(tmp_path, n=200)
    tail = ws.config("tail.yaml", source={"tail": True, "delay": 0.05, "batch-size": 4})
    for processes, rows in ((2, 40), (3, 100)):
        proc = ws.start("--processes", str(processes), config=tail)
        wait_for(lambda rows=rows: len(read_rows(ws.output)) >= rows and has_local_progress(ws.recovery),
                 what=f"{rows} rows and a closed epoch on {processes} processes")
        code, out, err = ws.stop(proc, signal.SIGTERM)
        assert code == 0, err
        assert processes == 2 or "restore: local" in out, out  # run 1 started fresh
        links = sorted(p.name for p in (ws.recovery / "proc-0").iterdir())
        assert links == [f"part-{i}.sqlite3" for i in owned(0, processes, PARTS)]
    code, out, err = ws.finish(ws.start("--processes", "1"))
    assert code == 0, err
    assert "restore: local" in out, out
    assert_exactly_once(read_rows(ws.output), 200)


# -- one supervisor per process (pods) ---------------------------------------------------------


def test_one_supervisor_per_process_peers_health_and_crash(tmp_path: Path) -> None:
    """Two supervisors, `--process-id 0|1 --addresses` on 127.0.0.1 / 127.0.0.2 (two "pods",
    each with its own recovery.dir and the same metrics.port): process 0 alone reports its
    peer unreachable in /healthz; with both up the cluster runs; kill -9 of process 1's
    child makes process 0's child exit too (Timely), both supervisors restart theirs, and
    the output is complete and exact. Each proc-K directory holds exactly its share."""
    ws = Workspace(tmp_path, n=240)
    addrs = f"127.0.0.1:{free_port()};127.0.0.2:{free_port()}"
    mport = free_port()
    cfgs = [ws.config(f"pod{k}.yaml", source={"tail": True, "delay": 0.05, "batch-size": 4},
                      recovery={"dir": str(tmp_path / f"pod{k}" / "recovery")},
                      metrics={"port": mport, "host": f"127.0.0.{k + 1}"}) for k in (0, 1)]
    p0 = ws.start("--process-id", "0", "--addresses", addrs, config=cfgs[0])

    def healthz(k: int) -> dict[str, Any]:
        return dict(json.loads(http_get(mport, "/healthz", f"127.0.0.{k + 1}")[1] or "{}"))

    down = wait_for(lambda: healthz(0).get("peers_unreachable"), what="process 0 to report its peer")
    assert down == [f"process 1 (127.0.0.2:{mport})"]
    p1 = ws.start("--process-id", "1", "--addresses", addrs, config=cfgs[1])
    wait_for(lambda: healthz(0).get("peers_unreachable") == [] and healthz(1).get("peers_unreachable") == [],
             what="both peers reachable", timeout=30)
    wait_for(lambda: len(read_rows(ws.output)) >= 40, what="output from the cluster", timeout=60)
    for k in (0, 1):
        files = sorted(p.name for p in (tmp_path / f"pod{k}" / "recovery" / f"proc-{k}").glob("*.sqlite3"))
        assert files == [f"part-{i}.sqlite3" for i in owned(k, 2, 4)]

    def status(k: int) -> dict[str, Any]:
        try:
            return dict(json.loads((tmp_path / f"pod{k}" / "supervisor.json").read_text()))
        except (OSError, ValueError):
            return {}

    victim, other = status(1)["child_pid"], status(0)["child_pid"]
    os.kill(victim, signal.SIGKILL)
    wait_for(lambda: status(0).get("restarts") == 1 and status(1).get("restarts") == 1,
             what="both supervisors to restart their process", timeout=60)
    assert status(0)["child_pid"] != other
    wait_for(lambda: len(read_rows(ws.output)) == 240, what="all input processed", timeout=90)
    for p in (p0, p1):
        p.send_signal(signal.SIGTERM)
    for p in (p0, p1):
        code, _, err = ws.finish(p)
        assert code == 0, err
    assert_exactly_once(read_rows(ws.output), 240)


# -- the orders pipeline, Kafka -> Kafka exactly-once, with a crash ------------------------------


def _produce_by_key(bootstrap: str, topic: str, lines: list[bytes]) -> list[tuple[bytes, int, int]]:
    """Each line to partition `_part`; (line, partition, offset) in produce order."""
    producer = Producer({"bootstrap.servers": bootstrap, "linger.ms": 5, "enable.idempotence": True})
    offsets: Counter[int] = Counter()
    placed = []
    for i, line in enumerate(lines):
        p = _part(line, i)
        producer.produce(topic, line, partition=p)
        placed.append((line, p, offsets[p]))
        offsets[p] += 1
    assert producer.flush(30) == 0
    return placed


def _expected_changes(cfg: dict[str, Any], src: str, placed: list[tuple[bytes, int, int]]) -> Counter[str]:
    """The same pipeline run once in memory on the same records (the table changes)."""
    from bytewax.testing import TestingSink, TestingSource, run_main

    from dataflows.config import Config
    from dataflows.events import RawRecord, kafka_event_id
    from dataflows.json_codec import to_jsonable
    from dataflows.pipelines.orders import build_flow

    raw = [RawRecord(line, kafka_event_id(src, p, off), f"kafka:{src}",
                     coords={"topic": src, "partition": p, "offset": off}) for line, p, off in placed]
    expected: list[Any] = []
    run_main(build_flow(Config(cfg), source=TestingSource(raw), sink=TestingSink(expected),
                        dlq_sink=TestingSink([])))
    return Counter(json.dumps(to_jsonable(c), sort_keys=True) for c in expected)


@pytest.mark.parametrize("processes", [2, 3])
def test_orders_kafka_exactly_once_on_n_processes_with_a_kill(
    kafka_bootstrap: str, tmp_path: Path, processes: int
) -> None:
    """4-partition input topic, 2-partition output topic (transactional): the cluster's
    read_committed output equals the in-memory run's, after kill -9 of the last process's
    child mid-run (0 lost, 0 duplicated)."""
    from tests.test_kafka_harness import orders_config

    tag = f"{processes}-{os.getpid()}-{free_port()}"
    src = create_topic(kafka_bootstrap, f"cl-in-{tag}", PARTS)
    out = create_topic(kafka_bootstrap, f"cl-out-{tag}", 2)
    dlq = create_topic(kafka_bootstrap, f"cl-dlq-{tag}", 1)
    placed = _produce_by_key(kafka_bootstrap, src, _orders_lines())
    cfg = orders_config(kafka_bootstrap, src, out, dlq)
    cfg["patterns"]["dedup"]["ttl"] = "100000h"
    want = _expected_changes(cfg, src, placed)

    ws = Workspace(tmp_path)
    cfg.update({k: dict(v) for k, v in FAST.items()})
    cfg["recovery"]["dir"] = str(ws.recovery)
    cfg["checkpoints"]["dir"] = ws.store_url
    cfg["savepoints"] = {"dir": ws.store_url}
    config = tmp_path / "orders.yaml"
    config.write_text(yaml.safe_dump(cfg))
    ready = tmp_path / "ready"
    proc = ws.start("--processes", str(processes), config=config,
                    env={"SF_TEST_READY_FILE": str(ready), "SF_TEST_THROTTLE_MS": "4"})
    st = wait_for(lambda: len((s := ws.status()).get("child_pids", [])) == processes and s,
                  what=f"{processes} children", timeout=60)
    wait_for(ready.exists, what="the first records in the flow", timeout=60)
    os.kill(st["child_pids"][-1], signal.SIGKILL)
    code, _, err = ws.finish(proc, timeout=240)
    assert code == 0, err
    assert ws.status()["restarts"] == 1, err
    got = Counter(json.dumps(json.loads(m.value()), sort_keys=True)
                  for m in read_topic(kafka_bootstrap, out, partitions=2, timeout_s=120))
    assert sum(want.values()) > 100
    assert got == want, f"lost {sum((want - got).values())}, duplicated {sum((got - want).values())}"
