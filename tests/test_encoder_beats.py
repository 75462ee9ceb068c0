"""BEATs encoder: strict loading of an official-layout checkpoint (random values), shapes,
determinism, pooling, clear errors, and the gated relative-bias attention against a direct
transcription of the official formula."""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch

import official
from embed.encoders import create
from embed.encoders.beats import MultiheadAttention, relative_position_buckets
from embed.encoders.checkpoint import CheckpointError

# cfg as stored in BEATs_iter3_plus_AS2M.pt (kept with the official-output fixture)
ITER3_CFG = official.load_spec("beats")["cfg"]


def official_state(cfg: dict, seed: int = 0) -> dict[str, torch.Tensor]:
    """Random tensors under the official BEATs state-dict names and shapes."""
    g = torch.Generator().manual_seed(seed)
    rnd = lambda *shape, std=0.02: torch.randn(*shape, generator=g) * std  # noqa: E731
    d, e, f = cfg["encoder_embed_dim"], cfg["embed_dim"], cfg["encoder_ffn_embed_dim"]
    h, p, k = cfg["encoder_attention_heads"], cfg["input_patch_size"], cfg["conv_pos"]
    s = {
        "patch_embedding.weight": rnd(e, 1, p, p, std=0.05),
        "layer_norm.weight": 1 + rnd(e), "layer_norm.bias": rnd(e),
        "post_extract_proj.weight": rnd(d, e, std=0.04), "post_extract_proj.bias": rnd(d),
        "encoder.pos_conv.0.weight_g": 1 + rnd(1, 1, k).abs(),
        "encoder.pos_conv.0.weight_v": rnd(d, d // cfg["conv_pos_groups"], k),
        "encoder.pos_conv.0.bias": rnd(d),
        "encoder.layer_norm.weight": 1 + rnd(d), "encoder.layer_norm.bias": rnd(d),
    }
    rel = rnd(cfg["num_buckets"], h, std=0.5)  # one table, saved under every layer's name
    for i in range(cfg["encoder_layers"]):
        pre = f"encoder.layers.{i}."
        for name in ("k_proj", "v_proj", "q_proj", "out_proj"):
            s[f"{pre}self_attn.{name}.weight"] = rnd(d, d, std=0.05)
            s[f"{pre}self_attn.{name}.bias"] = rnd(d)
        s[f"{pre}self_attn.relative_attention_bias.weight"] = rel.clone()
        s[f"{pre}self_attn.grep_linear.weight"] = rnd(8, d // h, std=0.1)
        s[f"{pre}self_attn.grep_linear.bias"] = rnd(8)
        s[f"{pre}self_attn.grep_a"] = 1 + rnd(1, h, 1, 1)
        for ln in ("self_attn_layer_norm", "final_layer_norm"):
            s[f"{pre}{ln}.weight"] = 1 + rnd(d)
            s[f"{pre}{ln}.bias"] = rnd(d)
        s[f"{pre}fc1.weight"], s[f"{pre}fc1.bias"] = rnd(f, d), rnd(f)
        s[f"{pre}fc2.weight"], s[f"{pre}fc2.bias"] = rnd(d, f), rnd(d)
    if cfg["finetuned_model"]:
        s["predictor.weight"], s["predictor.bias"] = rnd(cfg["predictor_class"], d), rnd(cfg["predictor_class"])
    return s


def save(path, cfg: dict, state: dict, **extra) -> str:
    torch.save({"cfg": cfg, "model": state, **extra}, path)
    return str(path)


SMALL_CFG = {**ITER3_CFG, "encoder_layers": 2}


@pytest.fixture(scope="module")
def encoder(tmp_path_factory):
    path = save(tmp_path_factory.mktemp("beats") / "BEATs_iter3_plus_AS2M.pt", ITER3_CFG, official_state(ITER3_CFG))
    return create("beats", path)


def audio(seconds: float, batch: int = 2, seed: int = 1) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return (0.1 * rng.standard_normal((batch, int(round(seconds * 16000))))).astype(np.float32)


@pytest.mark.parametrize("seconds", [1.0, 5.0, 3.37])
def test_frames_shape_finite_deterministic(encoder, seconds):
    batch = 2 if seconds == 1.0 else 1  # the CPU budget of the suite is small
    x = audio(seconds, batch=batch)
    n_fbank = 1 + (x.shape[1] - 400) // 160
    frames = encoder.frame_embeddings(x)
    assert frames.shape == (batch, n_fbank // 16, 768)
    assert torch.isfinite(frames).all()
    if batch == 2:
        assert not torch.allclose(frames[0], frames[1])  # different inputs differ
    emb = encoder.embed(x)  # a second, independent pass over the same input
    assert emb.shape == (batch, 768) and emb.dtype == np.float32 and np.isfinite(emb).all()
    np.testing.assert_array_equal(emb, frames.mean(dim=1).numpy())  # deterministic


def test_batch_independent(encoder):
    x = audio(1.0)
    both = encoder.frame_embeddings(x)
    one = encoder.frame_embeddings(x[1:])
    torch.testing.assert_close(both[1:], one, atol=2e-4, rtol=1e-4)


def test_poolings(encoder):
    x = audio(1.0, batch=1)
    frames = encoder.frame_embeddings(x)[0].numpy()
    sizes = {"mean": 768, "max": 768, "meanmax": 768, "meanstd": 1536}
    for pooling, size in sizes.items():
        encoder.pooling = pooling
        emb = encoder.embed(x)
        assert emb.shape == (1, size) and encoder.embedding_size == size
    encoder.pooling = "meanstd"
    np.testing.assert_allclose(encoder.embed(x)[0, :768], frames.mean(0), atol=1e-5)
    encoder.pooling = "mean"


def test_missing_and_misshapen_keys(tmp_path):
    state = official_state(SMALL_CFG)
    bad = dict(state)
    del bad["encoder.layers.1.fc2.bias"]
    with pytest.raises(CheckpointError, match=r"encoder\.layers\.1\.fc2\.bias"):
        create("beats", save(tmp_path / "missing.pt", SMALL_CFG, bad))
    bad = dict(state)
    bad["encoder.pos_conv.0.weight_v"] = torch.zeros(768, 48, 64)
    with pytest.raises(CheckpointError, match=r"encoder\.pos_conv\.0\.weight_v"):
        create("beats", save(tmp_path / "shape.pt", SMALL_CFG, bad))
    with pytest.raises(CheckpointError, match="cfg"):
        torch.save(state, tmp_path / "bare.pt")
        create("beats", str(tmp_path / "bare.pt"))


def test_finetuned_checkpoint_with_predictor_and_labels(tmp_path):
    cfg = {**SMALL_CFG, "finetuned_model": True}
    path = save(tmp_path / "ft.pt", cfg, official_state(cfg), label_dict={0: "/m/09x0r", 1: "/m/05zppz"})
    enc = create("beats", path)
    assert enc.embed(audio(1.0)).shape == (2, 768)
    # and a fine-tuned file missing its head is refused, naming the key
    state = official_state(cfg)
    del state["predictor.weight"]
    with pytest.raises(CheckpointError, match="predictor.weight"):
        create("beats", save(tmp_path / "ft_bad.pt", cfg, state))


def official_buckets(n: int, num_buckets: int, max_distance: int) -> np.ndarray:
    """Element-wise transcription of the official bucketing."""
    out = np.zeros((n, n), dtype=np.int64)
    half = num_buckets // 2
    max_exact = half // 2
    for i in range(n):
        for j in range(n):
            r = j - i
            b = half if r > 0 else 0
            r = abs(r)
            if r < max_exact:
                b += r
            else:
                b += min(max_exact + int(math.log(r / max_exact) / math.log(max_distance / max_exact)
                                         * (half - max_exact)), half - 1)
            out[i, j] = b
    return out


def test_buckets_match_official_rule():
    got = relative_position_buckets(300, 320, 800, torch.device("cpu")).numpy()
    np.testing.assert_array_equal(got, official_buckets(300, 320, 800))


def test_gated_attention_matches_official_formula():
    torch.manual_seed(0)
    dim, heads, n, b = 64, 4, 10, 2
    table = torch.nn.Embedding(320, heads)
    attn = MultiheadAttention(dim, heads, table, gru_rel_pos=True).eval()
    with torch.no_grad():
        attn.grep_a.uniform_(0.5, 1.5)
        x = torch.randn(b, n, dim)
        bias = table(relative_position_buckets(n, 320, 800, x.device)).permute(2, 0, 1)
        got = attn(x, bias)
        # official: q*scaling/alpha, (qk - max)*alpha, gate from the raw q, softmax, out_proj
        hd, alpha, scaling = dim // heads, 32, (dim // heads) ** -0.5
        xt = x.transpose(0, 1)  # T x B x C
        q = attn.q_proj(xt) * scaling / alpha
        k, v = attn.k_proj(xt), attn.v_proj(xt)
        q = q.reshape(n, b * heads, hd).transpose(0, 1)
        k = k.reshape(n, b * heads, hd).transpose(0, 1)
        v = v.reshape(n, b * heads, hd).transpose(0, 1)
        w = torch.bmm(q, k.transpose(1, 2))
        w = (w - w.max(dim=-1, keepdim=True)[0]) * alpha
        pos = bias.unsqueeze(0).repeat(b, 1, 1, 1).view(b * heads, n, n)
        ql = q.view(b, heads, n, hd) * alpha / scaling
        ga, gb = torch.sigmoid(attn.grep_linear(ql).view(b, heads, n, 2, 4).sum(-1)).chunk(2, dim=-1)
        w = w + ((ga * (gb * attn.grep_a - 1.0) + 2.0).view(b * heads, n, 1) * pos)
        o = torch.bmm(torch.softmax(w, -1), v).transpose(0, 1).reshape(n, b, dim)
        want = attn.out_proj(o).transpose(0, 1)
    torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-4)


def test_matches_official_outputs(tmp_path):
    """Against the authors' BEATs code on the same generated checkpoint and clips
    (tests/fixtures/official/make_beats.py): fbank, frames and clip embedding."""
    spec = official.load_spec("beats")
    path = save(tmp_path / "BEATs_iter3_plus_AS2M.pt", spec["cfg"], official.generate_state_dict(spec))
    enc = create("beats", path)
    errors = official.errors_vs_official(enc, "beats", enc.model.fbank)
    print("relative error vs official:", errors)  # shown by pytest -rP
    assert max(errors.values()) <= 1e-4, errors
