"""Text encoder vs diffusers' Wan prompt path, the offline tokenizer, and the reference T5 key map."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch

from wan_dist.models.presets import get_preset
from wan_dist.models.ref_keymaps import t5_state_dict_from_reference, t5_state_dict_to_reference
from wan_dist.models.text_encoder import TextEncoder, build_text_encoder, clean_prompt
from wan_dist.models.tokenizer import CORPUS, build_tokenizer, load_tokenizer

CONFIG = get_preset("tiny").text_encoder
NEGATIVE_ZH = ("色调艳丽，过曝，静态，细节模糊不清，字幕，风格，作品，画作，画面，静止，整体发灰，最差质量，低质量，"
               "JPEG压缩残留，丑陋的，残缺的，多余的手指，画得不好的手部，画得不好的脸部，畸形的，毁容的，形态畸形的肢体，"
               "手指融合，静止不动的画面，杂乱的背景，三条腿，背景人很多，倒着走")
PROMPTS = [
    "A cat walks on the grass in a sunny garden, cinematic lighting.",
    NEGATIVE_ZH,
    "Tom &amp;amp; Jerry   run\n\tacross  the    beach &lt;3 — café naïve 😀",
    "",
    "a dog runs quickly " * 200,  # longer than text_len: truncated, still ends with </s>
]


@pytest.fixture(scope="module")
def tokenizer_dir(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("tokenizer")
    build_tokenizer(str(path), vocab_size=CONFIG.vocab_size)
    return path


@pytest.fixture(scope="module")
def tokenizer(tokenizer_dir):
    return load_tokenizer(tokenizer_dir)


@pytest.fixture(scope="module")
def encoder(tokenizer) -> TextEncoder:
    torch.manual_seed(0)
    model = build_text_encoder(CONFIG)
    return TextEncoder(model, tokenizer, text_len=CONFIG.text_len)


# --- tokenizer --------------------------------------------------------------------------------
def test_tokenizer_loads_with_autotokenizer(tokenizer_dir, tokenizer):
    from transformers import AutoTokenizer

    auto = AutoTokenizer.from_pretrained(str(tokenizer_dir))
    assert type(auto).__name__ in ("T5Tokenizer", "T5TokenizerFast")
    assert (auto.pad_token_id, auto.eos_token_id, auto.unk_token_id) == (0, 1, 2)
    assert auto.convert_ids_to_tokens([0, 1, 2]) == ["<pad>", "</s>", "<unk>"]
    assert len(auto) <= CONFIG.vocab_size
    assert (tokenizer_dir / "spiece.model").is_file()


def test_tokenizer_matches_sentencepiece_and_stays_in_vocab(tokenizer_dir, tokenizer):
    import sentencepiece as spm

    processor = spm.SentencePieceProcessor(model_file=str(tokenizer_dir / "spiece.model"))
    texts = list(CORPUS[:20]) + [clean_prompt(p) for p in PROMPTS[:3]] + ["ＡＢＣ full-width １２３ ﬁ", "Ω ∑ ü ß 漢字"]
    for text in texts:
        ids = tokenizer(text).input_ids
        assert ids == processor.encode(text) + [1], text  # same pieces as SentencePiece, then </s>
        assert max(ids) < CONFIG.vocab_size
    for text in ("A cat walks on the grass in a sunny garden.", "一只猫在阳光明媚的花园里慢慢地走。"):
        assert tokenizer.decode(tokenizer(text).input_ids, skip_special_tokens=True) == text


def test_tokenizer_build_is_deterministic(tokenizer_dir, tmp_path):
    build_tokenizer(str(tmp_path), vocab_size=CONFIG.vocab_size)
    first = {p.name: p.read_bytes() for p in tokenizer_dir.iterdir()}
    second = {p.name: p.read_bytes() for p in tmp_path.iterdir()}
    assert first.keys() == second.keys() and first == second


def test_tokenizer_respects_smaller_vocab(tmp_path):
    build_tokenizer(str(tmp_path), vocab_size=256)
    tok = load_tokenizer(tmp_path)
    assert len(tok) <= 256
    assert max(max(tok(text).input_ids) for text in CORPUS) < 256
    with pytest.raises(ValueError, match="vocab_size=64"):
        build_tokenizer(str(tmp_path / "too_small"), vocab_size=64)


# --- prompt cleaning ----------------------------------------------------------------------------
def test_clean_prompt_matches_reference_rules():
    from diffusers.pipelines.wan.pipeline_wan import prompt_clean

    assert clean_prompt("Tom &amp;amp; Jerry") == "Tom & Jerry"
    assert clean_prompt("  a \n\t b\u3000c  ") == "a b c"
    assert clean_prompt("cafÃ© &lt;b&gt;") == "café <b>"  # ftfy mojibake fix, double unescape
    for text in PROMPTS + ["\u00a0x\u2003y\x1c", "&amp;lt;tag&amp;gt;"]:
        assert clean_prompt(text) == prompt_clean(text)


# --- encoder ----------------------------------------------------------------------------------
def test_build_text_encoder_config():
    model = build_text_encoder(CONFIG)
    cfg = model.config
    assert (cfg.vocab_size, cfg.d_model, cfg.d_ff, cfg.d_kv, cfg.num_heads, cfg.num_layers) == (
        CONFIG.vocab_size, CONFIG.d_model, CONFIG.d_ff, CONFIG.d_kv, CONFIG.num_heads, CONFIG.num_layers)
    assert (cfg.relative_attention_num_buckets, cfg.relative_attention_max_distance) == (32, 128)
    assert cfg.feed_forward_proj == "gated-gelu" and cfg.dense_act_fn == "gelu_new" and cfg.is_gated_act
    assert not model.training
    biases = [b.layer[0].SelfAttention.relative_attention_bias for b in model.encoder.block]
    assert all(b is not None for b in biases) and len({id(b) for b in biases}) == CONFIG.num_layers


def test_encode_matches_diffusers_wan_pipeline(encoder: TextEncoder, tokenizer):
    from diffusers import WanPipeline

    ours = encoder.encode(PROMPTS)
    pipe = WanPipeline(tokenizer=tokenizer, text_encoder=encoder.model, vae=None, scheduler=None)
    theirs = pipe._get_t5_prompt_embeds(PROMPTS, max_sequence_length=CONFIG.text_len, device=torch.device("cpu"))
    assert ours.shape == theirs.shape == (len(PROMPTS), CONFIG.text_len, CONFIG.d_model)
    assert ours.dtype == theirs.dtype == torch.float32
    assert (ours - theirs).abs().max().item() <= 1e-6


def test_rows_past_true_length_are_zero(encoder: TextEncoder):
    ids, mask = encoder.tokenize(PROMPTS)
    lengths = mask.sum(dim=1).tolist()
    assert lengths[3] == 1 and lengths[4] == CONFIG.text_len  # "" -> just </s>; long prompt truncated
    for row, length in enumerate(lengths):
        assert ids[row, length - 1].item() == 1  # </s> is kept
    out = encoder.encode(PROMPTS)
    for row, length in enumerate(lengths):
        assert torch.count_nonzero(out[row, length:]) == 0
        assert bool((out[row, :length].abs().sum(dim=-1) > 0).all())


def test_encode_dtype_device_and_batch_independence(encoder: TextEncoder):
    full = encoder.encode(PROMPTS[:3])
    single = encoder.encode([PROMPTS[1]])
    torch.testing.assert_close(single[0], full[1], rtol=1e-5, atol=1e-6)
    half = encoder.encode(PROMPTS[:2], dtype=torch.bfloat16, device="cpu")
    assert half.dtype == torch.bfloat16 and half.device.type == "cpu"
    with pytest.raises(TypeError):
        encoder.encode("not a list")


# --- reference T5 key map -------------------------------------------------------------------
def reference_t5_shapes(config) -> dict[str, tuple[int, int]]:
    """Parameter names/shapes of Wan-Video/Wan2.2 wan/modules/t5.py T5Encoder (shared_pos=False)."""
    inner = config.num_heads * config.d_kv
    out = {"token_embedding.weight": (config.vocab_size, config.d_model), "norm.weight": (config.d_model,)}
    for n in range(config.num_layers):
        p = f"blocks.{n}."
        out[p + "norm1.weight"] = (config.d_model,)
        for name in "qkv":
            out[p + f"attn.{name}.weight"] = (inner, config.d_model)
        out[p + "attn.o.weight"] = (config.d_model, inner)
        out[p + "norm2.weight"] = (config.d_model,)
        out[p + "ffn.gate.0.weight"] = (config.d_ff, config.d_model)
        out[p + "ffn.fc1.weight"] = (config.d_ff, config.d_model)
        out[p + "ffn.fc2.weight"] = (config.d_model, config.d_ff)
        out[p + "pos_embedding.embedding.weight"] = (config.relative_attention_num_buckets, config.num_heads)
    return out


def reference_t5_forward(sd, ids, mask, config) -> torch.Tensor:
    """The reference T5 encoder's math on reference-named weights (fp32), written from its facts:
    RMS norm (fp32 variance, eps 1e-6), per-layer bidirectional relative bias, no 1/sqrt(d)
    scaling, masked keys, FFN = fc2(fc1(x) * gelu_tanh(gate.0(x))), final norm."""
    eps, heads, head_dim = 1e-6, config.num_heads, config.d_kv
    buckets, max_dist = config.relative_attention_num_buckets, config.relative_attention_max_distance

    def rms(x, w):
        return w * (x * torch.rsqrt(x.float().pow(2).mean(dim=-1, keepdim=True) + eps))

    length = ids.shape[1]
    rel = torch.arange(length)[None, :] - torch.arange(length)[:, None]
    half = buckets // 2
    bucket = (rel > 0).long() * half
    rel = rel.abs()
    exact = half // 2
    large = exact + (torch.log(rel.float().clamp(min=1) / exact) / math.log(max_dist / exact)
                     * (half - exact)).long()
    bucket = bucket + torch.where(rel < exact, rel, large.clamp(max=half - 1))

    x = sd["token_embedding.weight"][ids]
    batch = x.shape[0]
    key_mask = (mask == 0)[:, None, None, :]
    for n in range(config.num_layers):
        p = f"blocks.{n}."
        bias = sd[p + "pos_embedding.embedding.weight"][bucket].permute(2, 0, 1)[None]
        bias = bias.masked_fill(key_mask, torch.finfo(x.dtype).min)
        h = rms(x, sd[p + "norm1.weight"])
        q, k, v = (torch.nn.functional.linear(h, sd[p + f"attn.{name}.weight"]).view(batch, length, heads, head_dim)
                   for name in "qkv")
        attn = torch.softmax((torch.einsum("binc,bjnc->bnij", q, k) + bias).float(), dim=-1)
        h = torch.einsum("bnij,bjnc->binc", attn, v).reshape(batch, length, heads * head_dim)
        x = x + torch.nn.functional.linear(h, sd[p + "attn.o.weight"])
        h = rms(x, sd[p + "norm2.weight"])
        gate = torch.nn.functional.gelu(torch.nn.functional.linear(h, sd[p + "ffn.gate.0.weight"]), approximate="tanh")
        x = x + torch.nn.functional.linear(torch.nn.functional.linear(h, sd[p + "ffn.fc1.weight"]) * gate,
                                           sd[p + "ffn.fc2.weight"])
    return rms(x, sd["norm.weight"])


def test_t5_reference_keys_and_round_trip(encoder: TextEncoder):
    sd = encoder.model.state_dict()
    ref = t5_state_dict_to_reference(sd)
    assert {k: tuple(v.shape) for k, v in ref.items()} == reference_t5_shapes(CONFIG)
    back = t5_state_dict_from_reference(ref)
    assert set(back) == set(sd) and all(torch.equal(back[k], sd[k]) for k in sd)


def test_t5_loaded_from_reference_layout_gives_identical_embeddings(encoder: TextEncoder, tokenizer):
    ref = t5_state_dict_to_reference(encoder.model.state_dict())
    fresh = build_text_encoder(CONFIG)
    fresh.load_state_dict(t5_state_dict_from_reference(ref), strict=True)
    other = TextEncoder(fresh, tokenizer, text_len=CONFIG.text_len)
    assert torch.equal(other.encode(PROMPTS), encoder.encode(PROMPTS))


def test_t5_mapping_semantics_against_reference_math(encoder: TextEncoder):
    ref = t5_state_dict_to_reference(encoder.model.state_dict())
    ids, mask = encoder.tokenize(PROMPTS[:4])
    ids, mask = ids[:, :128], mask[:, :128]  # all four prompts fit in 128 tokens
    assert bool((mask.sum(dim=1) < 128).all())
    expected = reference_t5_forward(ref, ids, mask, CONFIG)
    with torch.no_grad():
        actual = encoder.model(input_ids=ids, attention_mask=mask).last_hidden_state
    valid = mask.bool()
    torch.testing.assert_close(actual[valid], expected[valid], rtol=1e-5, atol=1e-5)


def test_t5_keymap_rejects_unknown_keys():
    with pytest.raises(ValueError, match="blocks.0.bogus"):
        t5_state_dict_from_reference({"blocks.0.bogus.weight": torch.zeros(1)})
    with pytest.raises(ValueError, match="lm_head"):
        t5_state_dict_to_reference({"lm_head.weight": torch.zeros(1)})
