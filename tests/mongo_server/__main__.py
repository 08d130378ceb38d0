"""Run the test MongoDB server standalone: `python -m tests.mongo_server [--port P] [--oplog-size N]`.

Prints the connection string on the first line of stdout, serves until
SIGTERM / SIGINT or until stdin closes (so a parent process can own it).
"""

from __future__ import annotations

import argparse
import signal
import sys
import threading

from tests.mongo_server import MongoTestServer


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--port", type=int, default=None)
    ap.add_argument("--oplog-size", type=int, default=1_000_000)
    args = ap.parse_args()
    server = MongoTestServer(oplog_size=args.oplog_size, port=args.port).start()
    done = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: done.set())
    signal.signal(signal.SIGINT, lambda *_: done.set())
    threading.Thread(target=lambda: (sys.stdin.read(), done.set()), daemon=True).start()
    print(server.uri, flush=True)
    done.wait()
    server.stop()


if __name__ == "__main__":
    main()
