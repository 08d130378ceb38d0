"""The dead-letter JSON envelope (`DeadLetter.to_json`): byte-identical to the asdict-based one
it replaced, strict JSON whatever the coordinates hold, and round-tripping through `from_json`."""

from __future__ import annotations

import threading

from dataflows.dead_letter import DeadLetter

LETTER = DeadLetter(
    "MALFORMED_JSON", "bad \udc80 json", "JSONDecodeError", "orders.parse", "orders", b"\xff{", "kafka:o:0:1",
    "kafka:o", b"k1", "Traceback", {"topic": "o", "partition": 0, "offset": 1, "ratio": float("nan")},
    (("h", b"v\x00"),), 2, 10, 30,
)
# LETTER.to_json() on 732f8f2 (dataclasses.asdict, then the base64 fields)
ENVELOPE = ('{"attempts":2,"coords":{"offset":1,"partition":0,"ratio":null,"topic":"o"},"error_code":'
            '"MALFORMED_JSON","error_message":"bad \ufffd json","event_id":"kafka:o:0:1","exception_class":'
            '"JSONDecodeError","first_failure_ms":10,"headers":[["h","dgA="]],"key":"azE=","last_failure_ms":30,'
            '"payload":"/3s=","pipeline":"orders","source":"kafka:o","stacktrace":"Traceback","stage":"orders.parse"}')


def test_the_envelope_is_the_one_written_before() -> None:
    assert LETTER.to_json() == ENVELOPE
    assert LETTER.to_json(written_by="kafka-sink") == ENVELOPE[:-1] + ',"written_by":"kafka-sink"}'
    bare = DeadLetter("SINK_WRITE", "m", "", "s", "p", b"", "e", "src")
    assert bare.to_json() == (
        '{"attempts":1,"coords":{},"error_code":"SINK_WRITE","error_message":"m","event_id":"e",'
        '"exception_class":"","first_failure_ms":0,"headers":[],"key":null,"last_failure_ms":0,"payload":"",'
        '"pipeline":"p","source":"src","stacktrace":"","stage":"s"}'
    )
    assert DeadLetter.from_json(bare.to_json()) == bare


def test_a_letter_whose_coords_cannot_be_deep_copied_still_serialises() -> None:
    """`dataclasses.asdict` deep-copied every field value it does not walk (a coordinate such
    as a lock, a client handle ...): `to_json` raised TypeError ("cannot pickle '_thread.lock'
    object") and the letter could not reach the DLQ. Such a value is written as its str."""
    lock = threading.Lock()
    letter = DeadLetter("SOURCE_ERROR", "m", "", "s", "p", b"x", "e", "src", coords={"lock": lock, "n": 1})
    back = DeadLetter.from_json(letter.to_json())
    assert back.coords == {"lock": str(lock), "n": 1}
    assert back.payload == b"x"
