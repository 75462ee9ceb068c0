"""Frame caches (`extract --frames`): frames with their times, the cache key, crash safety."""
import numpy as np
import pytest
import soundfile as sf
import torch

from classify.features.caches import find_cache
from embed.audio import open_resampled, read_audio
from embed.cache import CacheDamagedError, FrameCache, list_caches
from embed.datasets.circor import Recording, load_circor
from embed.encoders import Encoder, create
from embed.extract import extract, open_cache
from embed.frames import FrameConfig
from embed.segments import SegmentConfig


class ClockEncoder(Encoder):
    """Frames are the mean sample of each 50 ms span: on a ramp x(t) = t / 100 a frame's value
    times 100 is its centre time."""
    name = "clock"
    sample_rate = 4000
    frame_hop_s = 0.05
    feature_dim = 1
    needs_checkpoint = takes_checkpoint = False

    def frames(self, audio: torch.Tensor) -> torch.Tensor:
        return audio.reshape(len(audio), -1, 200).mean(dim=2, keepdim=True)


@pytest.fixture()
def ramp(tmp_path):
    duration = 12.3
    wav = tmp_path / "ramp" / "1_AV.wav"
    wav.parent.mkdir()
    sf.write(wav, np.arange(int(duration * 4000)) / 4000 / 100, 4000, subtype="FLOAT")
    return [Recording("1_AV", "1", "AV", wav)], duration


@pytest.mark.parametrize("hop", [None, 0.25, 0.15])
def test_frame_times_match_the_frames_they_label(ramp, tmp_path, hop):
    recordings, duration = ramp
    config = FrameConfig("fp32", hop)
    report = extract(ClockEncoder(), recordings, tmp_path / "cache", frames=config, progress=False)
    assert report.done == 1 and report.problems == []
    rec = open_cache(ClockEncoder(), SegmentConfig(), tmp_path / "cache", config).read()["1_AV"]
    # a stored frame's value is the mean of the frames it averages, and so is its time
    np.testing.assert_allclose(100 * rec.embeddings[:, 0], rec.times, atol=1e-3)
    assert (np.diff(rec.times) > 0).all() and rec.times[-1] < duration
    if hop != 0.15:  # 0.15 s leaves a shorter last run in each 5 s window
        step = hop or 0.05
        # every frame centred in the recording, those in the zero-padded tail of the last window dropped
        assert rec.embeddings.shape == (int(np.ceil(duration / step - 0.5)), 1)
        np.testing.assert_allclose(np.diff(rec.times), step, atol=1e-5)
        assert rec.times[0] == pytest.approx(step / 2, abs=1e-6)


def test_frames_equal_the_encoders_frames_and_round_trip_in_fp16(synthetic_data, tmp_path):
    rec = load_circor(synthetic_data).recordings()[0]
    enc = create("logmel")
    stored = {}
    for dtype in ("fp32", "fp16"):
        extract(enc, [rec], tmp_path, frames=FrameConfig(dtype), progress=False)
        stored[dtype] = open_cache(enc, SegmentConfig(), tmp_path, FrameConfig(dtype)).read()[rec.recording_id]
    x = read_audio(rec.wav).samples[:20000]
    direct = enc.frame_embeddings(x[None])[0].numpy()
    np.testing.assert_allclose(stored["fp32"].embeddings[:len(direct)], direct, rtol=1e-5, atol=1e-5)
    assert stored["fp16"].embeddings.dtype == np.float16
    np.testing.assert_array_equal(stored["fp16"].embeddings, stored["fp32"].embeddings.astype(np.float16))
    np.testing.assert_array_equal(stored["fp16"].times, stored["fp32"].times)


def test_frame_cache_key_follows_its_options_and_stays_apart(synthetic_data, tmp_path):
    recs = load_circor(synthetic_data).recordings()[:2]
    enc = create("logmel")
    extract(enc, recs, tmp_path, progress=False)  # a window cache beside the frame caches
    for config in (FrameConfig(), FrameConfig("fp32"), FrameConfig(hop_s=0.02), FrameConfig(window_s=4.0)):
        assert extract(enc, recs, tmp_path, frames=config, progress=False).done == 2
    assert extract(enc, recs, tmp_path, frames=FrameConfig(), progress=False).skipped == 2
    assert len(list_caches(tmp_path, "logmel", "frames")) == 4
    assert len(list_caches(tmp_path, "logmel")) == 1  # probe never mistakes a frame cache for windows
    assert find_cache(tmp_path, "logmel").path.name.count("frames") == 0
    with pytest.raises(ValueError, match="several frame caches"):
        find_cache(tmp_path, "logmel", "frames")


def test_frame_hop_must_fit_the_encoder_and_damage_is_named(synthetic_data, tmp_path):
    recs = load_circor(synthetic_data).recordings()[:1]
    with pytest.raises(ValueError, match="multiple of logmel's frame hop"):
        extract(create("logmel"), recs, tmp_path, frames=FrameConfig(hop_s=0.025), progress=False)
    with pytest.raises(ValueError, match="positive"):
        FrameConfig(hop_s=0)
    report = extract(create("logmel"), recs, tmp_path, frames=FrameConfig(), progress=False)
    path = report.cache_path
    raw = bytearray(path.read_bytes())
    raw[len(raw) // 2: len(raw) // 2 + 4096] = bytes(4096)
    path.write_bytes(bytes(raw))
    cache = FrameCache(tmp_path, "logmel", open_cache(create("logmel"), SegmentConfig(), tmp_path,
                                                       FrameConfig()).config)
    with pytest.raises(CacheDamagedError, match=path.name):
        cache.read()
    # the same command sets the damage aside and embeds the recording again
    again = extract(create("logmel"), recs, tmp_path, frames=FrameConfig(), progress=False)
    assert again.done == 1 and set(cache.read()) == {recs[0].recording_id}


def test_frames_of_one_chosen_layer(circor_mini, tmp_path):
    weights = circor_mini.parent / "weights" / "efficientat_mn04_as_mAP_432.pt"
    if not weights.exists():
        pytest.skip("../shared/weights/efficientat_mn04_as_mAP_432.pt not present")
    rec = min(load_circor(circor_mini).recordings(), key=lambda r: r.wav.stat().st_size)
    with pytest.raises(ValueError, match="one layer's frames"):
        extract(create("mn04", weights, layers="3,5"), [rec], tmp_path, frames=FrameConfig(), progress=False)
    enc = create("mn04", weights, layers="3")
    assert extract(enc, [rec], tmp_path, frames=FrameConfig("fp32"), progress=False).done == 1
    stored = find_cache(tmp_path, "mn04", "frames").read()[rec.recording_id]
    audio = open_resampled(rec.wav, enc.sample_rate)
    window = enc.layer_frames(audio.windows(np.array([0]), 5 * enc.sample_rate), [3])[0][0].numpy()
    assert stored.embeddings.shape[1] == enc.block_dims()[3] != enc.feature_dim
    np.testing.assert_allclose(stored.embeddings[:len(window)], window, rtol=1e-4, atol=1e-4)
    # block 3 runs at a finer frame rate than the embedding: times are spread over each window
    assert np.diff(stored.times).max() < enc.frame_hop_s and stored.times[-1] < audio.n_samples / enc.sample_rate
