import numpy as np
import pytest

from embed.cache import CacheLockedError, CachedRecording, EmbeddingCache
from embed.datasets.circor import load_circor
from embed.encoders import create
from embed.extract import extract, open_cache
from embed.segments import SegmentConfig


@pytest.fixture(scope="module")
def recordings(synthetic_data):
    return load_circor(synthetic_data).recordings()[:12]


def test_extract_then_rerun_reuses_cache(recordings, tmp_path):
    enc = create("logmel")
    first = extract(enc, recordings, tmp_path, progress=False)
    assert first.done == 12 and first.skipped == 0 and first.problems == []
    cached = open_cache(enc, SegmentConfig(), tmp_path).read()
    assert set(cached) == {r.recording_id for r in recordings}
    again = extract(enc, recordings, tmp_path, progress=False)
    assert again.done == 0 and again.skipped == 12
    rec = cached[recordings[0].recording_id]
    assert rec.embeddings.shape[1] == enc.embedding_size
    # embeddings equal a direct run of the encoder over the same window
    from embed.audio import read_audio
    x = read_audio(recordings[0].wav).samples[:20000]
    np.testing.assert_allclose(rec.embeddings[0], enc.embed(x[None])[0], rtol=1e-5, atol=1e-5)


def test_changed_config_gets_a_new_cache(recordings, tmp_path):
    extract(create("logmel"), recordings[:3], tmp_path, progress=False)
    other = extract(create("logmel", mfcc=False), recordings[:3], tmp_path, progress=False)
    strided = extract(create("logmel"), recordings[:3], tmp_path, SegmentConfig(train_stride_s=1.0),
                      progress=False)
    assert other.done == 3 and strided.done == 3
    assert len(set(p.name for p in tmp_path.glob("logmel-*.h5"))) == 3


def test_mismatched_entry_is_refused(tmp_path):
    a = EmbeddingCache(tmp_path, "enc", {"x": 1})
    rec = CachedRecording("r1", np.ones((2, 3), np.float32), np.array([0, 5]), np.array([0, 1]), np.array([0]))
    a.write_shard([rec])
    a.consolidate()
    assert set(a.read()) == {"r1"} and not a.parts_dir.exists()
    forged = EmbeddingCache(tmp_path, "enc", {"x": 2})
    forged.path = a.path  # pretend the file belongs to another config
    with pytest.raises(RuntimeError, match="another configuration"):
        forged.read()


def test_lock_blocks_a_second_writer(tmp_path):
    a = EmbeddingCache(tmp_path, "enc", {"x": 1})
    b = EmbeddingCache(tmp_path, "enc", {"x": 1})
    a.lock()
    with pytest.raises(CacheLockedError, match="another extract run"):
        b.lock(timeout_s=0.3)
    a.unlock()
    b.lock(timeout_s=0.3)
    b.unlock()
