"""A MongoDB server for tests, at the wire level, that real pymongo talks to over TCP.

No MongoDB server can be installed in this environment, so StreamForge tests
run against this one: `mockupdb` parses and frames the wire protocol
(OP_MSG and the legacy OP_QUERY handshake); `CommandHandler` answers from an
in-memory `Store`. It reports itself as a replica-set primary (`rs0`, wire
version 17) and supports what StreamForge uses: hello, ping, insert, update
(`$set $unset $inc`, replacement, upsert), delete, find (filters, sort,
limit, batchSize, getMore), aggregate with `$changeStream` (resumeAfter,
startAfter, startAtOperationTime, fullDocument: updateLookup,
postBatchResumeToken), killCursors, drop (-> drop + invalidate events),
listCollections, create, count, endSessions.

    server = MongoTestServer(oplog_size=1000).start()
    client = pymongo.MongoClient(server.uri)
    ...
    server.roll_oplog()         # every held resume token -> 286 ChangeStreamHistoryLost
    server.cursor_loss_code = 136   # open streams overtaken by the oplog answer 136 CappedPositionLost
    server.standalone = True    # hello without setName; $changeStream -> 40573
    server.fresh_stream_lookback = 3  # a fresh stream's first batch carries the last 3 entries
    server.reads                # readConcern / $readPreference of every find / aggregate / count
    server.stop(); server.start()   # network errors for clients; data is kept
    server.fail_command("update", times=2, code=91, labels=["RetryableWriteError"])
    server.close()
"""

from __future__ import annotations

from typing import Any

from tests.mongo_server.changes import decode_token, make_token
from tests.mongo_server.store import ServerError, Store
from tests.mongo_server.wire import CommandHandler, Failpoint, WireServer

__all__ = ["MongoTestServer", "ServerError", "Store", "decode_token", "make_token"]


class MongoTestServer:
    """Controls one test server: start/stop (data survives), oplog, failpoints."""

    def __init__(self, *, oplog_size: int = 100_000, port: int | None = None,
                 max_bson_size: int = 16 * 1024 * 1024, noop_interval_s: float = 10.0) -> None:
        self.store = Store(oplog_size=oplog_size, noop_interval_s=noop_interval_s)
        self.handler = CommandHandler(self.store, lambda: f"localhost:{self.port}", max_bson_size)
        self.port: int | None = port
        self._wire: WireServer | None = None

    @property
    def uri(self) -> str:
        """Connection string (`directConnection`, short server-selection timeout)."""
        return f"mongodb://localhost:{self.port}/?directConnection=true&serverSelectionTimeoutMS=3000"

    @property
    def running(self) -> bool:
        return self._wire is not None

    def start(self) -> MongoTestServer:
        """Listen (again) on the same port; clients reconnect and find their data."""
        if self._wire is None:
            self.handler.stopping.clear()
            self._wire = WireServer(self.handler, port=self.port)
            self.port = self._wire.run()
        return self

    def stop(self) -> None:
        """Close the listener and every connection: clients see network errors."""
        if self._wire is not None:
            self.handler.stopping.set()
            with self.store.lock:
                self.store.changed.notify_all()
            self._wire.stop()
            self._wire = None

    close = stop

    def roll_oplog(self) -> None:
        """Overwrite the whole oplog: any token held now answers 286 on resume."""
        self.store.roll_oplog()

    @property
    def cursor_loss_code(self) -> int:
        return self.store.cursor_loss_code

    @cursor_loss_code.setter
    def cursor_loss_code(self, code: int) -> None:
        self.store.cursor_loss_code = code

    @property
    def standalone(self) -> bool:
        return self.handler.standalone

    @standalone.setter
    def standalone(self, value: bool) -> None:
        self.handler.standalone = value

    @property
    def fresh_stream_lookback(self) -> int:
        return self.handler.fresh_stream_lookback

    @fresh_stream_lookback.setter
    def fresh_stream_lookback(self, n: int) -> None:
        self.handler.fresh_stream_lookback = n

    @property
    def reads(self) -> list[dict[str, Any]]:
        """readConcern / $readPreference of each find / aggregate / count so far."""
        return self.handler.reads

    def set_oplog_size(self, size: int) -> None:
        with self.store.lock:
            self.store.oplog_size = size
            while len(self.store.oplog) > size:
                self.store.oplog.popleft()

    def fail_command(self, command: str, *, times: int = 1, code: int = 91,
                     errmsg: str = "injected failure", labels: list[str] | None = None,
                     close_connection: bool = False) -> None:
        """Make the next `times` `command`s fail (or drop the connection)."""
        with self.store.lock:
            self.handler.failpoints.append(
                Failpoint(command, times, code, errmsg, list(labels or []), close_connection))

    def clear_failpoints(self) -> None:
        with self.store.lock:
            self.handler.failpoints.clear()

    def current_token(self) -> dict[str, Any]:
        """The high-water-mark token of the latest oplog entry."""
        with self.store.lock:
            return make_token(self.store.last_ts, self.store.last_seq, "00")

    def __enter__(self) -> MongoTestServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
