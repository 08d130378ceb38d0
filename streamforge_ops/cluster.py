"""One dataflow over several Bytewax processes (Timely's TCP exchange): who runs what, where state lives.

Bytewax's cluster mode is `python -m bytewax.run FLOW -i K -a "h0:p0;h1:p1;..."`: process K of
N (N = the number of addresses) listens on its own address, connects to the others, and the
dataflow's workers (`-w` per process) span all of them. If one process dies, the others' Timely
send threads panic and they exit 1 (measured on 0.21.1: "Send thread panic"), so the cluster
always goes down as a whole; a restarted process waits (Timely retries the connection) until
every peer is back.

Two ways to run it, one supervisor code path (`Supervisor` runs the `local` process ids of a
`Cluster` as one `ChildGroup`):

- `streamforge run P --processes N` (one machine): ONE supervisor runs all N processes on
  loopback, on free ports picked again at every start. Any child exiting non-zero stops the
  others and the whole group restarts with the existing backoff (one `restarts` count per
  cluster restart). The job's recovery directory keeps every partition as today, so
  checkpoints, restore, compaction and rescale (another N) work unchanged; process K's own
  directory `<recovery.dir>/proc-K` holds symlinks to the partitions `placement.owned(K, N, count)`
  names (`link_views`; SQLite resolves the link, so the WAL stays beside the real file).
- `streamforge run P --process-id K --addresses "a0;a1;..."` (a pod of a StatefulSet; also
  env `STREAMFORGE_PROCESS_ID` / `STREAMFORGE_ADDRESSES`; `--process-id ordinal` reads K from
  the host name's `-N` suffix, as a StatefulSet names its pods): one supervisor per pod, one
  child, its partitions as real files in `<recovery.dir>/proc-K` (`prepare_own_dir`; a fresh
  process creates exactly its share). The supervisor notices a peer crash by its own child
  exiting (the panic above) and restarts it; it probes its peers' supervisors (`/healthz` on
  the same `metrics.port`, the peer's host) and reports the unreachable ones in `/healthz`.

Each process runs as `python -m streamforge_ops.cluster_child` (`bytewax.run` keeping the
worker's own error, which Bytewax's cluster mode replaces by the panic above); when the
group fails, `ChildGroup.poll` logs `process K of N failed: <its first error line>`.
"""

from __future__ import annotations

import os
import re
import shutil
import signal
import socket
import tempfile
import threading
import time
import urllib.error
import urllib.request
import weakref
from collections.abc import Callable, Mapping
from dataclasses import dataclass, replace
from pathlib import Path

from recovery.lease import pid_alive
from recovery.placement import owned, process_dir
from streamforge_ops.child import Child
from streamforge_ops.cli import CliError
from streamforge_ops.cluster_child import ERROR_FILE_ENV

__all__ = [
    "ChildGroup",
    "Cluster",
    "PeerWatch",
    "cluster_from_args",
    "link_views",
    "parse_addresses",
    "prepare_own_dir",
]

_ORDINAL_RE = re.compile(r"-(\d+)$")


@dataclass(frozen=True)
class Cluster:
    """N processes by address; `local` are the ids this supervisor runs (all of them on one
    machine, one in a pod); `loopback` clusters pick new free ports at every start."""

    addresses: tuple[str, ...]
    local: tuple[int, ...]
    loopback: bool = False

    @property
    def processes(self) -> int:
        return len(self.addresses)

    @property
    def holds_all(self) -> bool:
        """True when every process runs here (one recovery directory holds every partition)."""
        return len(self.local) == self.processes

    def bytewax_args(self, process_id: int) -> list[str]:
        return ["-i", str(process_id), "-a", ";".join(self.addresses)]

    def peers(self) -> list[tuple[int, str]]:
        """(process id, host) of the processes run by other supervisors."""
        return [(k, a.rsplit(":", 1)[0]) for k, a in enumerate(self.addresses) if k not in self.local]

    def renewed(self) -> Cluster:
        """A loopback cluster on fresh free ports; any other unchanged."""
        if not self.loopback:
            return self
        return replace(self, addresses=tuple(f"127.0.0.1:{p}" for p in _free_ports(self.processes)))


def _free_ports(n: int) -> list[int]:
    """n distinct free TCP ports on 127.0.0.1 (held open together so they differ)."""
    socks = [socket.socket(socket.AF_INET, socket.SOCK_STREAM) for _ in range(n)]
    try:
        for s in socks:
            s.bind(("127.0.0.1", 0))
        return [s.getsockname()[1] for s in socks]
    finally:
        for s in socks:
            s.close()


def parse_addresses(text: str) -> tuple[str, ...]:
    """`host:port;host:port;...` -> the addresses; CliError naming the bad one."""
    items = tuple(a.strip() for a in text.split(";") if a.strip())
    if not items:
        raise CliError(f"--addresses: no address in {text!r}; give host:port;host:port;...")
    for a in items:
        host, sep, port = a.rpartition(":")
        if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
            raise CliError(f"--addresses: {a!r} is not host:port (port 1-65535)")
    dup = sorted({a for a in items if items.count(a) > 1})
    if dup:
        raise CliError(f"--addresses: {', '.join(dup)} listed more than once")
    return items


def _process_id(text: str, hostname: str) -> int:
    if text == "ordinal":
        m = _ORDINAL_RE.search(hostname)
        if not m:
            raise CliError(f"--process-id ordinal: host name {hostname!r} does not end in -N "
                           "(a StatefulSet pod's ordinal)")
        return int(m.group(1))
    try:
        return int(text)
    except ValueError:
        raise CliError(f"--process-id: {text!r} is not an integer or 'ordinal'") from None


def cluster_from_args(
    processes: int | None,
    process_id: str | None,
    addresses: str | None,
    env: Mapping[str, str] = os.environ,
    hostname: str | None = None,
) -> Cluster | None:
    """The cluster `streamforge run` flags describe, None for one process.

    `--processes N` alone: N local processes on loopback. `--process-id K --addresses A`
    (or env STREAMFORGE_PROCESS_ID / STREAMFORGE_ADDRESSES): process K of len(A), with
    `--processes`, if given, checked against len(A). Bad values raise CliError (exit 2).
    """
    process_id = process_id if process_id is not None else env.get("STREAMFORGE_PROCESS_ID") or None
    addresses = addresses if addresses is not None else env.get("STREAMFORGE_ADDRESSES") or None
    if processes is not None and processes < 1:
        raise CliError(f"--processes must be >= 1, got {processes}")
    if process_id is None and addresses is None:
        if processes is None or processes == 1:
            return None
        return Cluster(("",) * processes, tuple(range(processes)), loopback=True).renewed()
    if process_id is None or addresses is None:
        missing = "--addresses (or STREAMFORGE_ADDRESSES)" if addresses is None else \
            "--process-id (or STREAMFORGE_PROCESS_ID)"
        raise CliError(f"a process of a cluster needs {missing} as well")
    addrs = parse_addresses(addresses)
    k = _process_id(process_id.strip(), hostname or os.environ.get("HOSTNAME") or socket.gethostname())
    if processes is not None and processes != len(addrs):
        raise CliError(f"--processes {processes} but --addresses lists {len(addrs)} processes")
    if not 0 <= k < len(addrs):
        raise CliError(f"--process-id {k} is not in 0..{len(addrs) - 1} (--addresses lists "
                       f"{len(addrs)} processes)")
    return Cluster(addrs, (k,))


# -- recovery directories -------------------------------------------------------------------


def _part_name(index: int) -> str:
    return f"part-{index}.sqlite3"  # init_db_dir's names (recovery.partitions._PART_RE)


def link_views(recovery_dir: Path, cluster: Cluster, partition_count: int) -> list[Path]:
    """Local cluster: make `<recovery_dir>/proc-K` hold symlinks to exactly the partitions
    process K owns (old links removed); the real files stay in `recovery_dir`. Returns the
    process directories, by process id."""
    dirs = []
    for k in range(cluster.processes):
        pdir = process_dir(recovery_dir, k)
        pdir.mkdir(parents=True, exist_ok=True)
        for old in pdir.iterdir():
            if not old.is_symlink():
                raise CliError(f"{old} is not a link: {pdir} holds a process's own partitions "
                               "(a pod's layout); restore the job instead of running it locally")
            old.unlink()
        for i in owned(k, cluster.processes, partition_count):
            (pdir / _part_name(i)).symlink_to(Path("..") / _part_name(i))
        dirs.append(pdir)
    return dirs


def prepare_own_dir(recovery_dir: Path, cluster: Cluster, partition_count: int) -> tuple[Path, str]:
    """A pod: `<recovery_dir>/proc-K` holding process K's partitions. An empty directory gets
    them fresh (Bytewax's `init_db_dir` creates all `partition_count` in a scratch directory,
    K's are moved in, the rest dropped); existing ones must be exactly K's share.
    Returns (the directory, what was done)."""
    from recovery.partitions import init_partitions, part_index, partition_files

    (k,) = cluster.local
    pdir = process_dir(recovery_dir, k)
    want = owned(k, cluster.processes, partition_count)
    have = [part_index(p) for p in partition_files(pdir)]
    if have:
        if have != want:
            raise CliError(f"{pdir} holds partitions {have}, process {k} of {cluster.processes} owns "
                           f"{want} (recovery.partitions {partition_count}); restore a checkpoint or "
                           "savepoint to change the process count")
        return pdir, f"local partitions {want} in {pdir}"
    pdir.mkdir(parents=True, exist_ok=True)
    scratch = Path(tempfile.mkdtemp(prefix=f".init-{k}-", dir=recovery_dir))
    try:
        init_partitions(scratch, partition_count)
        for i in want:
            (scratch / _part_name(i)).replace(pdir / _part_name(i))
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    return pdir, f"created partitions {want} of {partition_count} in {pdir}"


# -- processes --------------------------------------------------------------------------------


def _keeping_errors(argv: list[str]) -> list[str]:
    """`python -m bytewax.run ...` -> `python -m streamforge_ops.cluster_child ...` (its doc)."""
    i = argv.index("bytewax.run")
    return [*argv[:i], "streamforge_ops.cluster_child", *argv[i + 1:]]


_ERRORS_PREFIX = "streamforge-cluster-errors-"


def _errors_dir() -> Path:
    """A fresh temporary directory for the processes' error files, named after this
    supervisor's pid; those of supervisors that died without cleaning up (kill -9) go."""
    root = Path(tempfile.gettempdir())
    for old in root.glob(f"{_ERRORS_PREFIX}*-*"):
        pid = old.name[len(_ERRORS_PREFIX):].split("-", 1)[0]
        if pid.isdigit() and int(pid) != os.getpid() and not pid_alive(int(pid)):
            shutil.rmtree(old, ignore_errors=True)
    return Path(tempfile.mkdtemp(prefix=f"{_ERRORS_PREFIX}{os.getpid()}-"))


def _error_report(path: Path) -> tuple[str, str] | None:
    """(kind, line) a process wrote to its error file (`cluster_child`), or None."""
    try:
        kind, _, line = path.read_text().strip().partition("\t")
    except OSError:
        return None
    return kind, line


class ChildGroup:
    """The Bytewax processes of one supervisor, started, polled and stopped together
    (the `Child` interface). `argv_for(process_id, cluster)` builds each command line;
    each runs under `streamforge_ops.cluster_child`, so when the group fails, `poll` logs
    which process failed and its own first error line (`failure`)."""

    def __init__(self, cluster: Cluster, argv_for: Callable[[int, Cluster], list[str]],
                 env: Mapping[str, str], stop_grace_s: float,
                 log: Callable[[str], None] | None = None) -> None:
        from streamforge_ops.snapshots import stderr_log

        self.cluster = cluster
        self.argv_for = argv_for
        self.env = dict(env)
        self.stop_grace_s = stop_grace_s
        self.log = log or stderr_log
        self.children: list[Child] = []
        self.started_at = 0.0
        self._errors = _errors_dir()
        weakref.finalize(self, shutil.rmtree, self._errors, True)

    def _error_file(self, process_id: int) -> Path:
        return self._errors / f"process-{process_id}"

    @property
    def pid(self) -> int | None:
        pids = self.pids
        return pids[0] if pids else None

    @property
    def pids(self) -> list[int]:
        return [p for p in (c.pid for c in self.children) if p is not None]

    def start(self) -> int:
        """Start every local process (a loopback cluster on fresh ports); the first pid."""
        self.cluster = self.cluster.renewed()
        for k in self.cluster.local:
            self._error_file(k).unlink(missing_ok=True)
        self.children = [Child(_keeping_errors(self.argv_for(k, self.cluster)),
                               {**self.env, ERROR_FILE_ENV: str(self._error_file(k))})
                         for k in self.cluster.local]
        pids = [c.start() for c in self.children]
        self.started_at = time.monotonic()
        return pids[0]

    def poll(self) -> int | None:
        """The first non-zero exit code (the others are stopped then), 0 once every process
        exited 0, None while any runs and none failed."""
        codes = [c.poll() for c in self.children]
        failed = [c for c in codes if c not in (None, 0)]
        if failed:
            seen = {k for k, code in zip(self.cluster.local, codes, strict=True) if code not in (None, 0)}
            self.stop(self.stop_grace_s)
            self.log(self.failure(seen))
            return failed[0]
        if codes and all(c == 0 for c in codes):
            return 0
        return None

    def failure(self, seen_first: set[int]) -> str:
        """`process K of N failed: LINE` for the process that failed first, once all exited:
        one whose worker raised (its own error, `cluster_child`), else one of `seen_first` (the
        processes seen exited when the failure was noticed, before `stop`) killed by a signal
        (a kill -9 leaves the others only the panic), else one of `seen_first`, lowest id first."""
        ranked = []
        for k, child in zip(self.cluster.local, self.children, strict=True):
            code = child.poll()
            report = _error_report(self._error_file(k))
            if report is not None and report[0] == "worker":
                rank, line = 0, report[1]
            elif k in seen_first and code is not None and code < 0:  # not by our own stop
                rank, line = 1, f"killed by {_signal_name(-code)}"
            else:
                rank = 2 if k in seen_first else 3
                line = report[1] if report else f"exit code {code}"
            ranked.append((rank, k, line))
        _, k, line = min(ranked)
        return f"process {k} of {self.cluster.processes} failed: {_explained(line)}"

    def stop(self, grace_s: float) -> int | None:
        """Stop every process (SIGINT to all at once, SIGKILL after the grace); the first
        non-zero exit code."""
        for c in self.children:
            c.interrupt()
        deadline = time.monotonic() + grace_s
        codes = [c.wait_or_kill(max(0.0, deadline - time.monotonic())) for c in self.children]
        return next((c for c in codes if c), codes[0] if codes else None)


_PEER_PANIC = "Send thread panic"  # Timely's comms guard when a peer's connection broke


def _explained(line: str) -> str:
    """A process's error line, saying so when it is only the panic of a peer's failure."""
    if _PEER_PANIC in line:
        return f"{line} (its connection to a peer broke: the process that failed runs elsewhere)"
    return line


def _signal_name(number: int) -> str:
    try:
        return signal.Signals(number).name
    except ValueError:
        return f"signal {number}"


# -- peers --------------------------------------------------------------------------------


class PeerWatch:
    """Probes the other supervisors of a cluster (`http://HOST:PORT/healthz`; any HTTP answer
    means reachable) every `interval_s` in a daemon thread; calls `report(unreachable)` with
    the sorted unreachable peers' descriptions whenever that set changes."""

    def __init__(self, cluster: Cluster, port: int, report: Callable[[list[str]], None],
                 interval_s: float = 5.0, timeout_s: float = 2.0) -> None:
        self.targets = [(f"process {k} ({host}:{port})", f"http://{host}:{port}/healthz")
                        for k, host in cluster.peers()]
        self.report, self.interval_s, self.timeout_s = report, interval_s, timeout_s
        self._stop = threading.Event()
        self._last: list[str] | None = None

    def probe(self) -> list[str]:
        down = []
        for name, url in self.targets:
            try:
                with urllib.request.urlopen(url, timeout=self.timeout_s):
                    pass
            except urllib.error.HTTPError:
                pass  # it answered (503 = unhealthy, but reachable)
            except (OSError, ValueError):
                down.append(name)
        if down != self._last:
            self._last = down
            self.report(down)
        return down

    def start(self) -> PeerWatch:
        def loop() -> None:
            while not self._stop.is_set():
                self.probe()
                self._stop.wait(self.interval_s)

        if self.targets:
            threading.Thread(target=loop, name="peer-watch", daemon=True).start()
        return self

    def stop(self) -> None:
        self._stop.set()
