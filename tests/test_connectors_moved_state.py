"""Recovery state pickled under the flat `dataflows/connectors/*.py` layout (before issue 11) still loads."""

from __future__ import annotations

import pickle
import subprocess
import sys

import pytest
from bson.timestamp import Timestamp

from dataflows.connectors.mongo.source import NamespaceState, ScanProgress

# pickle.dumps(NamespaceState(...)) written by main at 66464fc, when the class lived in
# dataflows/connectors/mongo_source.py (the module path is recorded in the pickle)
OLD_NAMESPACE_STATE = bytes.fromhex(
    "800595bb010000000000008c2164617461666c6f77732e636f6e6e6563746f72732e6d6f6e676f5f736f75726365948c0e4e"
    "616d65737061636553746174659493942981947d94288c05746f6b656e947d948c055f64617461948c043832363394738c0a"
    "67656e65726174696f6e944b028c047363616e9468008c0c5363616e50726f67726573739493942981947d942868094b028c"
    "0b73746172745f746f6b656e944e8c0d73746172745f74696d655f6d73944b058c076c6173745f6964944b078c086861735f"
    "6c61737494888c04646f6373944b038c0873746172745f6174948c0e62736f6e2e74696d657374616d70948c0954696d6573"
    "74616d709493942981947d94288c0f5f54696d657374616d705f5f696e63944b018c105f54696d657374616d705f5f74696d"
    "65944a00f1536575628c0a726561645f6166746572944e8c0475756964944e75628c0776657273696f6e944b018c07726573"
    "796e6373945d948c0178946168144e681d4e8c07636c7573746572944e8c0c6c6f73745f726573796e6373944b008c0b756e"
    "636f6e6669726d656494898c0668616c746564944e8c0968616c745f6b696e64944e8c0c6c6173745f73746172746564944b"
    "0075622e"
)
EXPECTED = NamespaceState(
    token={"_data": "8263"}, generation=2, resyncs=["x"],
    scan=ScanProgress(generation=2, start_token=None, start_time_ms=5, last_id=7, has_last=True, docs=3,
                      start_at=Timestamp(1700000000, 1)),
)


def test_the_pickle_names_the_old_module() -> None:
    assert b"dataflows.connectors.mongo_source" in OLD_NAMESPACE_STATE


def test_a_mongo_source_state_pickled_under_the_old_path_restores() -> None:
    state = pickle.loads(OLD_NAMESPACE_STATE)
    assert isinstance(state, NamespaceState) and isinstance(state.scan, ScanProgress)
    assert state == EXPECTED


def test_it_restores_in_a_fresh_process_that_imported_nothing() -> None:
    """What Bytewax does at resume: `pickle.loads` before any connector module is imported."""
    code = (
        "import pickle, sys; s = pickle.loads(bytes.fromhex(sys.stdin.read())); "
        "print(type(s).__module__, s.scan.start_at.time, s.generation)"
    )
    out = subprocess.run([sys.executable, "-c", code], input=OLD_NAMESPACE_STATE.hex(), text=True,
                         capture_output=True, check=True, timeout=60).stdout.split()
    assert out == ["dataflows.connectors.mongo.source", "1700000000", "2"]


@pytest.mark.parametrize("old", ["kafka_sink", "transactional", "mongo_sink", "replay_lines"])
def test_other_old_paths_are_gone(old: str) -> None:
    """Only pickled modules are mapped; code imports the new packages (no shims)."""
    with pytest.raises(ModuleNotFoundError):
        __import__(f"dataflows.connectors.{old}")
