"""The pure parts of start-up agreement and run-end measurement: the spec digest ranks compare,
the message naming differing keys, checkpoint commits that hash only what they wrote, and the
per-role peak memory that summary.json reports."""

import numpy as np

from distbelief_mpi.checkpoint import store
from distbelief_mpi.config import parse_job, spec_items
from distbelief_mpi.runtime.peak_memory import (
    ROLES,
    peak_rss_bytes,
    peaks_by_role,
    peaks_from_vector,
    role_vector,
    with_own_peak,
)
from distbelief_mpi.runtime.spec_agreement import differing_keys, mismatch_message, spec_digest


def items(**optimizer):
    return spec_items(parse_job({"data": {"path": "d.h5"}, "run": {"steps": 1}, "optimizer": optimizer}))


def test_the_digest_is_equal_exactly_when_the_items_are():
    a, b = items(learning_rate=0.05), items(learning_rate=0.05)
    assert spec_digest(a) == spec_digest(b) == spec_digest(dict(reversed(list(b.items()))))
    assert spec_digest(a) != spec_digest(items(learning_rate=0.5))
    assert spec_digest({"a.b": "1"}) != spec_digest({"a.b": "1", "a.c": "2"})
    assert len(spec_digest(a)) == 64


def test_the_message_names_every_differing_key_as_before():
    reference, mine = items(), items(learning_rate=0.5, batch_size=7)
    assert differing_keys(reference, mine) == ["optimizer.batch_size", "optimizer.learning_rate"]
    assert mismatch_message("job.toml", reference, reference) is None
    assert mismatch_message("job.toml", reference, mine) == (
        "job.toml: the job spec differs between ranks: optimizer.batch_size ('64' on rank 0, '7' here), "
        "optimizer.learning_rate ('0.05' on rank 0, '0.5' here)"
    )
    assert differing_keys({"a.x": "1"}, {}) == ["a.x"]


def test_a_commit_hashes_only_the_file_it_wrote(tmp_path, monkeypatch):
    root = tmp_path / "checkpoints"
    for step in (1, 2, 3):
        store.commit_checkpoint(root, step, np.ones(40, np.float32), {}, keep=3)
    hashed = []
    real = store.file_sha256
    monkeypatch.setattr(store, "file_sha256", lambda path: hashed.append(path.parent.name) or real(path))
    store.commit_checkpoint(root, 4, np.ones(40, np.float32), {}, keep=3)
    assert hashed == ["step-000000004"]  # pruning read manifests only
    assert [d.name for d in store.complete_checkpoints(root)] == ["step-000000004", "step-000000003", "step-000000002"]
    assert store.newest_committed_step(root) == 4 and store.newest_committed_step(tmp_path / "none") is None


def test_pruning_counts_committed_checkpoints_and_drops_older_partial_ones(tmp_path):
    root = tmp_path / "checkpoints"
    store.commit_checkpoint(root, 1, np.ones(40, np.float32), {}, keep=2)
    (root / "step-000000002").mkdir()  # crashed before its manifest
    store.commit_checkpoint(root, 3, np.ones(40, np.float32), {}, keep=2)
    store.commit_checkpoint(root, 4, np.ones(40, np.float32), {}, keep=2)
    assert sorted(d.name for d in root.iterdir()) == ["step-000000003", "step-000000004"]
    (root / "step-000000004" / "params.h5").unlink()  # a manifest naming a file that is gone
    assert store.committed_manifest(root / "step-000000004") is None
    assert store.newest_committed_step(root) == 3


def test_peaks_by_role():
    records = [
        {"role": "shard", "peak_rss_bytes": 10},
        {"role": "shard", "peak_rss_bytes": 30},
        {"role": "replica", "peak_rss_bytes": 20},
        {"role": "replica"},  # a report without one
    ]
    assert peaks_by_role(records) == {"shard": 30, "replica": 20}
    own = peak_rss_bytes()
    assert own > 1 << 20  # this Python process holds more than a MB
    assert with_own_peak({"replica": 5}, "replica") == {"replica": own}
    assert with_own_peak({"replica": own * 2}, "replica") == {"replica": own * 2}
    vector = role_vector("shard")
    assert len(vector) == len(ROLES) and vector[ROLES.index("shard")] >= own and sum(vector) == vector[1]
    assert peaks_from_vector([0, 7, 9]) == {"shard": 7, "replica": 9}
