"""The supervisor's HTTP endpoints: `/metrics`, `/healthz`, `/readyz`.

- `/metrics`: `prometheus_client.generate_latest()` of the default registry
  (the one `dataflows.metrics` registers in).
- `/healthz`: 200 while checkpoints progress and the child is not
  crash-looping; 503 when the last checkpoint (or the start, before the first
  one) is older than `unhealthy_after` seconds, or when the child restarted
  `crash_loop_restarts` times within `crash_loop_window` seconds. Its body
  also lists the peer supervisors of a pod cluster it cannot reach
  (`peers_unreachable`, `streamforge_ops.cluster.PeerWatch`), without failing:
  restarting this pod cannot bring them back.
- `/readyz`: 200 once state was restored, the child runs and every peer
  supervisor answers; 503 otherwise (with `peers_unreachable`).

Both health bodies are JSON with the reason, so an operator (or a test) can
see why. `HealthState` is the plain, thread-safe record the supervisor
updates; the server only reads it.
"""

from __future__ import annotations

import json
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from dataflows.metrics import REGISTRY  # importing it registers every StreamForge metric

__all__ = ["HealthServer", "HealthState"]


@dataclass
class HealthState:
    """What the supervisor knows about its job; every field is read under `lock`."""

    unhealthy_after: float
    crash_loop_restarts: int = 3
    crash_loop_window: float = 300.0
    clock: Callable[[], float] = time.time
    started_at: float = field(default=0.0)
    restored: bool = False
    restore_choice: str | None = None
    child_pid: int | None = None
    last_checkpoint_at: float | None = None
    checkpoints_taken: int = 0
    restart_times: deque[float] = field(default_factory=deque)
    peers_unreachable: list[str] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    def __post_init__(self) -> None:
        self.started_at = self.started_at or self.clock()

    def update(self, **changes: Any) -> None:
        with self.lock:
            for name, value in changes.items():
                setattr(self, name, value)

    def checkpoint_done(self) -> None:
        with self.lock:
            self.last_checkpoint_at = self.clock()
            self.checkpoints_taken += 1

    def restarted(self) -> None:
        with self.lock:
            self.restart_times.append(self.clock())

    def health(self) -> tuple[bool, dict[str, Any]]:
        """(healthy, details)."""
        with self.lock:
            now = self.clock()
            since = self.last_checkpoint_at or self.started_at
            age = now - since
            recent = [t for t in self.restart_times if now - t <= self.crash_loop_window]
            problems = []
            if age > self.unhealthy_after:
                what = "last checkpoint" if self.last_checkpoint_at else "start (no checkpoint yet)"
                problems.append(f"{what} was {age:.1f}s ago (limit {self.unhealthy_after:.1f}s)")
            if len(recent) >= self.crash_loop_restarts:
                problems.append(
                    f"crash loop: {len(recent)} restarts in the last {self.crash_loop_window:.0f}s"
                )
            return not problems, {
                "healthy": not problems,
                "problems": problems,
                "last_checkpoint_age_seconds": round(age, 3),
                "checkpoints_taken": self.checkpoints_taken,
                "recent_restarts": len(recent),
                "peers_unreachable": list(self.peers_unreachable),
            }

    def readiness(self) -> tuple[bool, dict[str, Any]]:
        """(ready, details): ready = restored and the child runs."""
        with self.lock:
            ready = self.restored and self.child_pid is not None and not self.peers_unreachable
            body: dict[str, Any] = {
                "ready": ready,
                "restored": self.restored,
                "restore": self.restore_choice,
                "child_pid": self.child_pid,
            }
            if self.peers_unreachable:  # a pod: alive (a restart cannot bring its peers back), not ready
                body["peers_unreachable"] = list(self.peers_unreachable)
                body["problems"] = [f"cannot reach peer supervisor(s): {', '.join(self.peers_unreachable)}"]
            return ready, body


class _Handler(BaseHTTPRequestHandler):
    state: HealthState  # set on the subclass made by HealthServer

    def do_GET(self) -> None:  # noqa: N802 (http.server API)
        path = self.path.split("?", 1)[0]
        if path == "/metrics":
            self._send(200, generate_latest(REGISTRY), CONTENT_TYPE_LATEST)
        elif path in ("/healthz", "/readyz"):
            ok, body = self.state.health() if path == "/healthz" else self.state.readiness()
            self._send(200 if ok else 503, json.dumps(body).encode(), "application/json")
        else:
            self._send(404, b"not found\n", "text/plain")

    def _send(self, code: int, body: bytes, ctype: str) -> None:
        self.send_response(code)
        self.send_header("Content-Type", ctype)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: Any) -> None:  # quiet: scraped every few seconds
        pass


class HealthServer:
    """A threaded HTTP server on (host, port); port 0 picks a free one."""

    def __init__(self, state: HealthState, host: str = "0.0.0.0", port: int = 0) -> None:
        handler = type("Handler", (_Handler,), {"state": state})
        self._server = ThreadingHTTPServer((host, port), handler)
        self._server.daemon_threads = True
        self._thread = threading.Thread(
            target=self._server.serve_forever, name="health-http", daemon=True
        )

    @property
    def port(self) -> int:
        return int(self._server.server_address[1])

    def start(self) -> HealthServer:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()
