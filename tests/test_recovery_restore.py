"""Restore: verification, fallback chain, strict mode, signing, refusals."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from recovery.checkpoint import CACHE_META, await_cache, default_cache_dir, take_checkpoint
from recovery.manifest import Manifest, manifest_key
from recovery.pack import FRAME_DIGEST
from recovery.partitions import init_partitions, logical_digest, partition_files
from recovery.restore import RestoreError, restore
from recovery.savepoint import create_savepoint
from recovery.store import ObjectStore, open_store
from tests.test_recovery_support import counting_flow, run, segments

PIPE = "orders"
KEY = b"k" * 32


@pytest.fixture
def setup(tmp_path: Path) -> tuple[Path, ObjectStore, list]:
    """A flow run in 3 rounds: savepoint after round 1, checkpoints after rounds 2 and 3."""
    rd = tmp_path / "rec"
    init_partitions(rd, 2)
    store = open_store(f"file://{tmp_path}/store")
    taken = []
    spec: list = []
    for round_ in range(3):
        spec.append(["k", 50, 25, round_ + 1])
        run(counting_flow(segments(spec), []), rd)
        if round_ == 0:
            taken.append(create_savepoint(rd, store, pipeline=PIPE, name="v1", signing_key=KEY))
        else:
            taken.append(take_checkpoint(rd, store, pipeline=PIPE, signing_key=KEY))
    return rd, store, taken


def _uploaded_digests(rd: Path) -> list[str]:
    """The `ms1:` digests of the copies the last (full) checkpoint of `rd` uploaded: its
    manifest records FRAME_DIGEST, its cache gets them in the background."""
    cache = default_cache_dir(rd)
    await_cache(cache)
    digests = json.loads((cache / CACHE_META).read_text())["digests"]
    return [digests[str(i)] for i in sorted(map(int, digests))]


def _restore(tmp_path: Path, store: ObjectStore, **kw):
    kw.setdefault("partition_count", 2)
    kw.setdefault("signing_key", KEY)
    return restore(
        tmp_path / "out", checkpoint_store=store, savepoint_store=store, pipeline=PIPE, **kw
    )


def _nothing_in(path: Path) -> bool:
    return not path.exists() or not any(path.iterdir())


def _damage(store: ObjectStore, key: str, how: str) -> None:
    data = store.get(key)
    if how == "truncate":
        store.put(key, data[: len(data) // 2])
    else:
        store.put(key, data[:10] + bytes([data[10] ^ 0xFF]) + data[11:])


def test_latest_checkpoint_chosen_and_verified(tmp_path: Path, setup) -> None:
    rd, store, (_, _, ck2) = setup
    result = _restore(tmp_path, store, signing_key=KEY)
    assert (result.chosen, result.id) == ("checkpoint", ck2.id)
    assert "latest valid checkpoint" in result.reason and result.notes == []
    assert {p.digest for p in ck2.partitions} == {FRAME_DIGEST}
    assert [logical_digest(p) for p in partition_files(tmp_path / "out")] == _uploaded_digests(rd)


@pytest.mark.parametrize("how", ["corrupt", "truncate"])
def test_damaged_object_rejected_with_fallback(tmp_path: Path, setup, how: str) -> None:
    _, store, (_, ck1, ck2) = setup
    _damage(store, ck2.partitions[1].object, how)
    result = _restore(tmp_path, store)
    assert (result.chosen, result.id) == ("checkpoint", ck1.id)
    assert "after 1 rejected" in result.reason
    assert len(result.notes) == 1 and ck2.id in result.notes[0]
    assert "corrupted or truncated" in result.notes[0]


def test_all_checkpoints_bad_falls_back_to_savepoint_then_fresh(tmp_path: Path, setup) -> None:
    _, store, (sp, ck1, ck2) = setup
    for m in (ck1, ck2):
        _damage(store, m.partitions[0].object, "truncate")
    result = _restore(tmp_path, store)
    assert (result.chosen, result.id, len(result.notes)) == ("savepoint", sp.id, 2)
    _damage(store, sp.partitions[0].object, "corrupt")
    (tmp_path / "out2").mkdir()
    fresh = restore(
        tmp_path / "out2",
        checkpoint_store=store,
        savepoint_store=store,
        pipeline=PIPE,
        partition_count=2,
        signing_key=KEY,
    )
    assert fresh.chosen == "fresh" and "no valid checkpoint or savepoint" in fresh.reason
    assert len(fresh.notes) == 3 and len(partition_files(tmp_path / "out2")) == 2


def test_strict_refuses_to_fall_back(tmp_path: Path, setup) -> None:
    _, store, (_, _, ck2) = setup
    _damage(store, ck2.partitions[0].object, "corrupt")
    with pytest.raises(RestoreError, match="strict"):
        _restore(tmp_path, store, strict=True)
    assert _nothing_in(tmp_path / "out")  # nothing (half-)restored, no stage left


def test_tampered_or_unsigned_manifest_refused_with_key(tmp_path: Path, setup) -> None:
    rd, store, (_, ck1, ck2) = setup
    key = manifest_key(PIPE, "checkpoint", ck2.id)
    doc = json.loads(store.get(key))
    doc["source_positions"] = {"count.inp": {"iterable": 0}}
    store.put(key, json.dumps(doc).encode())
    result = _restore(tmp_path, store, signing_key=KEY)
    assert result.id == ck1.id and "signature mismatch" in result.notes[0]
    unsigned = take_checkpoint(rd, store, pipeline=PIPE)
    result = _restore(tmp_path, store, signing_key=KEY)
    assert result.id == ck1.id
    assert any(unsigned.id in n and "not signed" in n for n in result.notes)
    with pytest.raises(RestoreError, match="signature mismatch"):
        _restore(tmp_path, store, signing_key=KEY, target=("checkpoint", ck2.id))
    # Explicitly allowed (security.allow-unsigned), the unsigned one is restored with the key
    # set; a wrong signature is still refused.
    assert _restore(tmp_path, store, allow_unsigned=True).id == unsigned.id
    with pytest.raises(RestoreError, match="signature mismatch"):
        _restore(tmp_path, store, allow_unsigned=True, target=("checkpoint", ck2.id))


def test_other_partition_count_and_pipeline_refused(tmp_path: Path, setup) -> None:
    _, store, (_, _, ck2) = setup
    with pytest.raises(
        RestoreError, match="has 2 partitions but this pipeline is configured for 4"
    ):
        _restore(tmp_path, store, partition_count=4)
    key = manifest_key(PIPE, "checkpoint", ck2.id)
    other = Manifest.from_json(store.get(key))
    other.pipeline = "payments"
    other.sign(KEY)  # a genuine manifest of another pipeline, not a tampered one
    store.put(key, other.to_json().encode())
    with pytest.raises(RestoreError, match="belongs to pipeline 'payments'"):
        _restore(tmp_path, store)


def test_fields_of_a_tampered_manifest_are_never_read(tmp_path: Path, setup) -> None:
    """Wrong pipeline AND partition count AND bad signature: the signature is reported.

    The old code checked the pipeline first and refused with "belongs to
    pipeline 'payments'", i.e. it acted on fields nobody had verified.
    """
    _, store, (_, ck1, ck2) = setup
    key = manifest_key(PIPE, "checkpoint", ck2.id)
    doc = json.loads(store.get(key))
    doc.update(pipeline="payments", partition_count=4, created_at="2999-01-01T00:00:00+00:00")
    store.put(key, json.dumps(doc).encode())
    result = _restore(tmp_path, store)
    assert result.id == ck1.id
    assert result.notes == [f"checkpoint {ck2.id} rejected: checkpoint {ck2.id}: "
                            "signature mismatch (tampered or signed with another key)"]
    with pytest.raises(RestoreError, match="signature mismatch") as err:
        _restore(tmp_path, store, target=("checkpoint", ck2.id))
    assert "payments" not in str(err.value) and "partitions" not in str(err.value)


def test_missing_signing_key_is_refused_not_loaded_unverified(tmp_path: Path, setup) -> None:
    """Signed snapshots, no key (e.g. the Secret not mounted): refused, nothing restored.

    The old code skipped verification and restored them.
    """
    _, store, (_, _, ck2) = setup
    with pytest.raises(RestoreError, match=f"checkpoint {ck2.id} is signed but no signing key"):
        _restore(tmp_path, store, signing_key=None)
    assert _nothing_in(tmp_path / "out")


def test_changed_signing_key_is_refused_not_a_fresh_start(tmp_path: Path, setup) -> None:
    """Every snapshot fails the signature: the key changed, refuse (old code: fresh start)."""
    with pytest.raises(RestoreError, match="no checkpoint or savepoint verifies") as err:
        _restore(tmp_path, setup[1], signing_key=b"another key" * 3)
    assert "--fresh" in str(err.value)
    assert partition_files(tmp_path / "out") == []


def test_explicit_savepoint_by_name_and_missing_target(tmp_path: Path, setup) -> None:
    _, store, (sp, _, _) = setup
    result = _restore(tmp_path, store, target=("savepoint", "v1"))
    assert (result.chosen, result.id) == ("savepoint", sp.id)
    assert result.source_positions == {"count.inp": {"iterable": 50}}
    with pytest.raises(RestoreError, match="no complete checkpoint 'nope'"):
        _restore(tmp_path, store, target=("checkpoint", "nope"))


def test_nothing_stored_is_a_fresh_start(tmp_path: Path) -> None:
    store = open_store(f"file://{tmp_path}/empty")
    result = _restore(tmp_path, store, strict=True)
    assert result.chosen == "fresh" and "no checkpoint or savepoint found" in result.reason
    assert len(partition_files(tmp_path / "out")) == 2


def test_restore_into_a_mount_point_swaps_files(tmp_path: Path, setup, monkeypatch) -> None:
    """A mount point cannot be renamed: restore swaps the partition files instead."""
    rd, store, (_, _, ck2) = setup
    out = tmp_path / "out"
    init_partitions(out, 2)
    (out / "part-0.sqlite3-wal").write_bytes(b"stale wal of the old partition")
    real_rename = Path.rename

    def rename(self: Path, target):
        if self == out:
            raise OSError(16, "Device or resource busy")
        return real_rename(self, target)

    monkeypatch.setattr(Path, "rename", rename)
    assert _restore(tmp_path, store).id == ck2.id
    assert not (out / "part-0.sqlite3-wal").exists()
    assert [logical_digest(p) for p in partition_files(out)] == _uploaded_digests(rd)
