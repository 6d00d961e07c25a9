"""An offline, deterministic T5/UMT5-style tokenizer for tiny checkpoints and tests.

The released models use google/umt5-xxl's SentencePiece unigram tokenizer. Tests and tiny
checkpoints cannot download it, so :func:`build_tokenizer` trains a small unigram model on a
built-in corpus (English and a little Chinese) and writes a folder that
``transformers.AutoTokenizer.from_pretrained`` loads as a ``T5Tokenizer``:

- ``spiece.model``: the SentencePiece model (pad 0, ``</s>`` 1, ``<unk>`` 2, as T5/UMT5);
- ``tokenizer.json`` + ``tokenizer_config.json``: the same vocabulary, scores and normaliser in
  the `tokenizers` format.

Why both: transformers 5 converts a bare ``spiece.model`` folder through protobuf (not installed
here, and ``vocab_file=`` is silently ignored), so the loadable form is ``tokenizer.json``. It is
built from the trained pieces and scores plus the model's precompiled normaliser charsmap, read
from the model file with a few lines of protobuf wire parsing, so it tokenises exactly as
SentencePiece does. The folder is byte-identical across builds with the same ``vocab_size``.
"""

from __future__ import annotations

import io
import json
import os
from pathlib import Path

__all__ = ["build_tokenizer", "load_tokenizer", "CORPUS"]

_SUBJECTS = (
    "a cat", "a dog", "two children", "an old man", "a young woman", "a red fox", "a white horse",
    "a small robot", "a flock of birds", "a fisherman", "a dancer", "a panda", "a astronaut",
)
_ACTIONS = (
    "walks slowly", "runs quickly", "jumps over a fence", "dances in the rain", "looks at the camera",
    "plays with a ball", "sits quietly", "turns around", "smiles and waves", "rides a bicycle",
)
_PLACES = (
    "in a sunny garden", "on a busy city street at night", "along a sandy beach at sunset",
    "in a snowy forest", "inside a cozy kitchen", "under cherry blossom trees", "on top of a mountain",
    "beside a calm lake", "in a neon-lit alley", "across a green meadow",
)
_STYLES = (
    "cinematic lighting, shallow depth of field", "close-up shot, soft focus", "wide angle, golden hour",
    "slow motion, high detail", "the camera pans from left to right", "aerial view, drone footage",
    "realistic style, 4K, vivid colors", "handheld camera, natural light",
)
_ENGLISH = (
    "Bright tones, overexposed, static, blurred details, subtitles, style, works, paintings, images,",
    "static, overall gray, worst quality, low quality, JPEG compression residue, ugly, incomplete,",
    "extra fingers, poorly drawn hands, poorly drawn faces, deformed, disfigured, misshapen limbs,",
    "fused fingers, still picture, messy background, three legs, many people in the background,",
    "walking backwards.",
    "Two anthropomorphic cats in comfy boxing gear and bright gloves fight intensely on a spotlighted stage.",
    "Summer beach vacation style, a white cat wearing sunglasses sits on a surfboard.",
    "A stylish woman walks down a Tokyo street filled with warm glowing neon and animated city signage.",
    "The waves crash against the rocks while seagulls fly overhead & the wind blows.",
    "Tom & Jerry's \"best\" day: 100% fun, 3.5 stars, 24 frames per second; 1280x720 (720p).",
)
_CHINESE = (
    "色调艳丽，过曝，静态，细节模糊不清，字幕，风格，作品，画作，画面，静止，整体发灰，最差质量，"
    "低质量，JPEG压缩残留，丑陋的，残缺的，多余的手指，画得不好的手部，画得不好的脸部，畸形的，毁容的，"
    "形态畸形的肢体，手指融合，静止不动的画面，杂乱的背景，三条腿，背景人很多，倒着走",
    "一只猫在阳光明媚的花园里慢慢地走。",
    "夜晚的城市街道上，霓虹灯闪烁，行人匆匆走过。",
    "两个孩子在海边的沙滩上奔跑，夕阳西下。",
    "镜头从左向右缓缓移动，展示了雪山和湖泊的美丽风景。",
    "一位老人坐在公园的长椅上看报纸，鸽子在他身边觅食。",
    "电影感的灯光，高清画质，慢动作，细节丰富。",
)


def _build_corpus() -> tuple[str, ...]:
    # Deterministic combinations: enough repeated sub-words for a few hundred unigram pieces.
    lines = list(_ENGLISH) + list(_CHINESE)
    for i, subject in enumerate(_SUBJECTS):
        for j, action in enumerate(_ACTIONS):
            place = _PLACES[(i + j) % len(_PLACES)]
            style = _STYLES[(i * 3 + j) % len(_STYLES)]
            lines.append(f"{subject.capitalize()} {action} {place}, {style}.")
    return tuple(lines)


CORPUS: tuple[str, ...] = _build_corpus()


def _read_varint(data: bytes, pos: int) -> tuple[int, int]:
    result = shift = 0
    while True:
        byte = data[pos]
        pos += 1
        result |= (byte & 0x7F) << shift
        if not byte & 0x80:
            return result, pos
        shift += 7


def _proto_fields(data: bytes):
    """Yield (field_number, wire_type, value) of a serialized protobuf message."""
    pos = 0
    while pos < len(data):
        key, pos = _read_varint(data, pos)
        field, wire = key >> 3, key & 7
        if wire == 0:
            value, pos = _read_varint(data, pos)
        elif wire == 1:
            value, pos = data[pos:pos + 8], pos + 8
        elif wire == 2:
            size, pos = _read_varint(data, pos)
            value, pos = data[pos:pos + size], pos + size
        elif wire == 5:
            value, pos = data[pos:pos + 4], pos + 4
        else:
            raise ValueError(f"tokenizer: unsupported protobuf wire type {wire} in spiece.model")
        yield field, wire, value


def _precompiled_charsmap(model_bytes: bytes) -> bytes | None:
    # sentencepiece_model.proto: ModelProto.normalizer_spec = 3; NormalizerSpec.precompiled_charsmap = 2.
    for field, wire, value in _proto_fields(model_bytes):
        if field == 3 and wire == 2:
            for sub_field, sub_wire, sub_value in _proto_fields(value):
                if sub_field == 2 and sub_wire == 2:
                    return bytes(sub_value) or None
    return None


def _train_spiece(vocab_size: int, corpus: tuple[str, ...] = CORPUS) -> bytes:
    import sentencepiece as spm

    spm.set_random_generator_seed(0)
    buffer = io.BytesIO()
    # sentence_iterator + model_writer: no file paths end up inside the model (determinism).
    spm.SentencePieceTrainer.train(
        sentence_iterator=iter(corpus), model_writer=buffer, vocab_size=vocab_size, model_type="unigram",
        hard_vocab_limit=False, character_coverage=1.0, pad_id=0, eos_id=1, unk_id=2, bos_id=-1,
        pad_piece="<pad>", eos_piece="</s>", unk_piece="<unk>", num_threads=1,
        shuffle_input_sentence=False, input_sentence_size=0, minloglevel=2,
    )
    return buffer.getvalue()


def build_tokenizer(out_dir: str, *, vocab_size: int, corpus: tuple[str, ...] | None = None) -> None:
    """Write a deterministic T5-style tokenizer folder; every token id is < ``vocab_size``.

    ``corpus``: the lines to train on (default: the built-in :data:`CORPUS`). A model that only ever
    reads one small language (the ``toy`` model's captions) gets a tokenizer of whole words this way.

    ``vocab_size`` is the text encoder's embedding size. The trained vocabulary may be smaller
    (``hard_vocab_limit=False`` on a small corpus), never larger; no sentinel ids are added.
    Raises ValueError when ``vocab_size`` cannot hold the corpus' characters (about 210 ids).
    """
    import sentencepiece as spm
    from transformers import T5Tokenizer

    try:
        model_bytes = _train_spiece(vocab_size, CORPUS if corpus is None else tuple(corpus))
    except RuntimeError as error:  # e.g. fewer ids than the corpus' distinct characters
        raise ValueError(f"build_tokenizer: vocab_size={vocab_size} is too small for the corpus "
                         f"(every character needs an id): {error}") from error
    processor = spm.SentencePieceProcessor(model_proto=model_bytes)
    size = processor.get_piece_size()
    if size > vocab_size:
        raise ValueError(f"build_tokenizer: trained {size} pieces, more than vocab_size={vocab_size}")
    vocab = [(processor.id_to_piece(i), float(processor.get_score(i))) for i in range(size)]
    tokenizer = T5Tokenizer(vocab=vocab, extra_ids=0, model_max_length=512,
                            _spm_precompiled_charsmap=_precompiled_charsmap(model_bytes))
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    tokenizer.save_pretrained(str(out))
    (out / "spiece.model").write_bytes(model_bytes)
    config_path = out / "tokenizer_config.json"
    config = json.loads(config_path.read_text(encoding="utf-8"))
    config["tokenizer_class"] = "T5Tokenizer"
    config_path.write_text(json.dumps(config, indent=2, sort_keys=True, ensure_ascii=False) + "\n",
                           encoding="utf-8")


def load_tokenizer(path_or_dir: str | os.PathLike):
    """Load a tokenizer folder (ours, google/umt5-xxl's, or a diffusers ``tokenizer/``)."""
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(str(path_or_dir))
