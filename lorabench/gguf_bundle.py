"""Shrink a GGUF decoder LM so it travels to an offline GPU machine in a bundle under 64 MiB.

Two independent steps, both for SmolLM2-135M-Instruct (Q4_1 layers, a tied Q8_0 token embedding of 28.7 MiB):

* :func:`trim_vocabulary` keeps only the tokens a study's texts need, and the embedding rows (and ``output.weight``
  rows, if untied) of those tokens, as raw bytes: nothing is requantized. Why this is honest: every kept row is
  the source's own bytes, so the logits of kept tokens are exactly the source's; and on the study's texts the
  tokenization is identical. BPE applies, at each step, the lowest-rank merge applicable among adjacent symbols;
  every merge the full tokenizer applies to those texts builds a symbol on the way to an emitted token, so the
  merge closure keeps its parts and result, and so the merge itself; the trimmed merges are an order-preserving
  subset, so the merge the full tokenizer picks is still the lowest-rank applicable one. What does change: the softmax's
  normaliser (a sum over fewer tokens, so cross-entropy is lower than the full model's) and which tokens greedy
  decoding can emit. The 256 byte-level base tokens stay, so any other text still encodes (bytes at worst).
* :func:`pack` / :func:`unpack` compress any GGUF file losslessly. Each Q4_1 block is 20 bytes (fp16 scale d,
  fp16 minimum m, 16 bytes of nibbles); its scales and nibbles compress far better apart than interleaved, so
  each Q4_1 tensor's data is stored de-interleaved (all 4-byte scale pairs, then all 16-byte nibble blocks).

Packed format: ``MAGIC``, a little-endian uint32 header length, a JSON header (``size``, ``sha256`` of the
original file, ``q4_1_regions``: the ``[offset, nbytes]`` of each de-interleaved region), then one xz stream
(preset 9 | extreme) of the whole file with those regions de-interleaved in place.
"""

from __future__ import annotations

import hashlib
import json
import lzma
import struct
import sys
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import IO, Any, NamedTuple

import numpy as np
from gguf import GGMLQuantizationType, GGUFReader, GGUFValueType
from gguf.gguf_reader import ReaderField, ReaderTensor

MAGIC = b"LBGGUFZ1"
_PRESET = 9 | lzma.PRESET_EXTREME
_CHUNK = 1 << 22
"""Bytes per read, write and compression call: bounds memory for any file size."""
_Q4_1_BLOCK, _Q4_1_SCALES = 20, 4
_NORMAL_TOKEN = 1
_PER_TOKEN_ARRAYS = ("tokenizer.ggml.tokens", "tokenizer.ggml.token_type", "tokenizer.ggml.scores")
_MERGES = "tokenizer.ggml.merges"
_VOCAB_TENSORS = ("token_embd.weight", "output.weight")


# ---------------------------------------------------------------- vocabulary trimming


class _Tensor(NamedTuple):
    """A tensor as it goes into the written file: its source info field, its dims (GGUF order) and its data."""

    field: ReaderField
    dims: list[int]
    data: np.ndarray


def trim_vocabulary(source: Path, texts: Iterable[str], out: Path) -> dict[str, int]:
    """Write ``out``: ``source`` with its vocabulary restricted to what ``texts`` need (see the module docstring).

    Returns ``tokens_before``, ``tokens_after``, ``merges_before`` and ``merges_after``.
    """
    reader = _little_endian_reader(source)
    tokens = reader.fields["tokenizer.ggml.tokens"].contents()
    merges = reader.fields[_MERGES].contents() if _MERGES in reader.fields else []
    kept = _kept_ids(reader, tokens, merges, _text_token_ids(source, texts))
    kept_merges = _kept_merges(tokens, merges, kept)
    fields = [_trimmed_field(field, kept, kept_merges, len(tokens)) for field in _kv_fields(reader)]
    tensors = [_trimmed_tensor(tensor, kept, len(tokens)) for tensor in reader.tensors]
    _write_gguf(out, reader, fields, tensors)
    return {
        "tokens_before": len(tokens),
        "tokens_after": len(kept),
        "merges_before": len(merges),
        "merges_after": len(kept_merges),
    }


def _kept_ids(reader: GGUFReader, tokens: list[str], merges: list[str], text_ids: set[int]) -> list[int]:
    """The sorted ids to keep: the texts' ids, byte tokens, non-normal tokens and named ids, closed under merges."""
    seeds = text_ids | _byte_token_ids(tokens) | _special_ids(reader) | _named_ids(reader, len(tokens))
    return sorted(_merge_closure(seeds, tokens, merges))


def _text_token_ids(source: Path, texts: Iterable[str]) -> set[int]:
    """Every id the source's own tokenizer gives the texts, with and without its default special tokens."""
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(source.parent, gguf_file=source.name)
    texts = list(texts)
    ids: set[int] = set()
    for add_special_tokens in (True, False):
        for row in tokenizer(texts, add_special_tokens=add_special_tokens)["input_ids"]:
            ids.update(row)
    return ids


def _byte_token_ids(tokens: list[str]) -> set[int]:
    """The 256 byte-level base tokens (GPT-2's printable spelling of each byte), so any text still encodes."""
    from transformers.convert_slow_tokenizer import bytes_to_unicode

    index = {token: i for i, token in enumerate(tokens)}
    return {index[symbol] for symbol in bytes_to_unicode().values() if symbol in index}


def _special_ids(reader: GGUFReader) -> set[int]:
    """Tokens whose type is not normal (control, user-defined, ...): the tokenizer adds them whole."""
    field = reader.fields.get("tokenizer.ggml.token_type")
    if field is None:
        return set()
    return {int(i) for i in np.flatnonzero(np.asarray(field.contents()) != _NORMAL_TOKEN)}


def _named_ids(reader: GGUFReader, n_tokens: int) -> set[int]:
    """The ids metadata names (bos, eos, padding, unknown, ...), so they can be remapped."""
    ids = {field.contents() for field in reader.fields.values() if _is_token_id_key(field.name)}
    if out_of_range := sorted(i for i in ids if not 0 <= i < n_tokens):
        raise ValueError(f"token ids {out_of_range} named in the metadata are outside the vocabulary of {n_tokens}")
    return ids


def _is_token_id_key(key: str) -> bool:
    return key.startswith("tokenizer.ggml.") and key.endswith("_token_id")


def _split_merge(merge: str) -> tuple[str, str]:
    left, right = merge.split(" ")
    return left, right


def _merge_closure(seeds: set[int], tokens: list[str], merges: list[str]) -> set[int]:
    """``seeds`` plus both parts of every merge that builds a kept token, recursively."""
    index = {token: i for i, token in enumerate(tokens)}
    parts_of: dict[str, list[tuple[str, str]]] = {}
    for merge in merges:
        left, right = _split_merge(merge)
        parts_of.setdefault(left + right, []).append((left, right))
    kept, todo = set(seeds), list(seeds)
    while todo:
        for parts in parts_of.get(tokens[todo.pop()], ()):
            for part in parts:
                if index[part] not in kept:
                    kept.add(index[part])
                    todo.append(index[part])
    return kept


def _kept_merges(tokens: list[str], merges: list[str], kept: list[int]) -> list[int]:
    """Indices of the merges whose two parts and result are all kept, in their original order (rank)."""
    kept_tokens = {tokens[i] for i in kept}
    return [
        rank for rank, merge in enumerate(merges) if {*_split_merge(merge), "".join(_split_merge(merge))} <= kept_tokens
    ]


def _kv_fields(reader: GGUFReader) -> list[ReaderField]:
    """The file's key/value fields, without the reader's pseudo-fields for the header."""
    return [field for name, field in reader.fields.items() if not name.startswith("GGUF.")]


def _trimmed_field(field: ReaderField, kept: list[int], kept_merges: list[int], n_tokens: int) -> bytes:
    """One key/value pair as it goes into the trimmed file: subset, remapped or byte-for-byte."""
    if field.name in _PER_TOKEN_ARRAYS:
        return _array_subset(field, kept)
    if field.name == _MERGES:
        return _array_subset(field, kept_merges)
    if _is_token_id_key(field.name):
        return _scalar_with(field, kept.index(field.contents()))
    if field.name.endswith(".vocab_size") and field.contents() == n_tokens:
        return _scalar_with(field, len(kept))
    if field.name.startswith("tokenizer.ggml.") and field.types[0] == GGUFValueType.ARRAY:
        if len(field.data) == n_tokens:
            raise ValueError(f"{field.name} holds one entry per token but is not known to trim_vocabulary")
    return _raw(field.parts)


def _raw(parts: Iterable[np.ndarray]) -> bytes:
    return b"".join(part.tobytes() for part in parts)


def _scalar_with(field: ReaderField, value: int) -> bytes:
    """A scalar field with a new value, its key and type unchanged."""
    return _raw(field.parts[:-1]) + np.asarray(value, dtype=field.parts[-1].dtype).tobytes()


def _array_subset(field: ReaderField, indices: list[int]) -> bytes:
    """An array field keeping only the elements at ``indices``; key, type and element encoding unchanged."""
    # parts: key length, key, type, element type, count, then each element (a string is its length and bytes)
    per_element = 2 if field.types[-1] == GGUFValueType.STRING else 1
    elements = (field.parts[field.data[i] - per_element + 1 : field.data[i] + 1] for i in indices)
    count = np.asarray(len(indices), dtype=field.parts[4].dtype).tobytes()
    return _raw(field.parts[:4]) + count + b"".join(_raw(element) for element in elements)


def _trimmed_tensor(tensor: ReaderTensor, kept: list[int], n_tokens: int) -> _Tensor:
    """A vocabulary tensor's kept rows (raw bytes: no requantization); any other tensor as it is."""
    dims = [int(d) for d in tensor.shape]
    if tensor.name not in _VOCAB_TENSORS:
        return _Tensor(tensor.field, dims, tensor.data)
    if dims[-1] != n_tokens:
        raise ValueError(f"{tensor.name} has {dims[-1]} rows, the vocabulary {n_tokens} tokens")
    return _Tensor(tensor.field, [*dims[:-1], len(kept)], np.ascontiguousarray(tensor.data[kept]))


def _write_gguf(out: Path, reader: GGUFReader, fields: list[bytes], tensors: list[_Tensor]) -> None:
    """Header, key/values, tensor infos (offsets recomputed) and aligned tensor data, as GGUF lays them out."""
    align = int(reader.alignment)
    infos, offset = [], 0
    for tensor in tensors:
        name_len, name, _, _, ggml_type, _ = tensor.field.parts
        dims = struct.pack(f"<I{len(tensor.dims)}Q", len(tensor.dims), *tensor.dims)
        infos.append(_raw([name_len, name]) + dims + _raw([ggml_type]) + struct.pack("<Q", offset))
        offset += _padded(tensor.data.nbytes, align)
    with out.open("wb") as f:
        f.write(reader.data[:8].tobytes() + struct.pack("<QQ", len(tensors), len(fields)))  # magic, version, counts
        f.writelines([*fields, *infos])
        _pad(f, align)
        for tensor in tensors:
            f.write(memoryview(np.ascontiguousarray(tensor.data)).cast("B"))
            _pad(f, align)


def _padded(n: int, align: int) -> int:
    return -(-n // align) * align


def _pad(f: IO[bytes], align: int) -> None:
    f.write(b"\0" * (_padded(f.tell(), align) - f.tell()))


def _little_endian_reader(path: Path) -> GGUFReader:
    reader = GGUFReader(path)
    if reader.byte_order != "I" or sys.byteorder != "little":
        raise ValueError(f"{path}: only little-endian GGUF files on little-endian hosts are supported")
    return reader


# ---------------------------------------------------------------- lossless packing


def pack(source: Path, out: Path) -> None:
    """Compress ``source`` (any GGUF file) into ``out``: its Q4_1 tensors de-interleaved, then one xz stream."""
    regions = _q4_1_regions(GGUFReader(source))
    header = {"size": source.stat().st_size, "sha256": _sha256(source), "q4_1_regions": regions}
    data = np.memmap(source, mode="r")
    compressor = lzma.LZMACompressor(format=lzma.FORMAT_XZ, preset=_PRESET)
    with out.open("wb") as f:
        _write_header(f, header)
        for chunk in _deinterleaved_chunks(data, regions):
            f.write(compressor.compress(chunk))
        f.write(compressor.flush())


def unpack(packed: Path, out: Path) -> None:
    """Restore the file :func:`pack` compressed, byte for byte (checked against its size and SHA-256). It is
    written beside ``out`` and takes that name only once both checks pass: a damaged file is never left there."""
    partial = out.with_name(f"{out.name}.partial")
    try:
        with packed.open("rb") as f, partial.open("wb") as g:
            header = _read_header(f)
            for chunk in _decompressed_chunks(f):
                g.write(chunk)
        if partial.stat().st_size != header["size"]:
            raise ValueError(f"{packed}: unpacked {partial.stat().st_size} bytes, expected {header['size']}")
        if header["q4_1_regions"]:
            _reinterleave(np.memmap(partial, mode="r+"), header["q4_1_regions"])
        if _sha256(partial) != header["sha256"]:
            raise ValueError(f"{packed}: the unpacked file's SHA-256 differs from the original's")
        partial.replace(out)
    finally:
        partial.unlink(missing_ok=True)


def _q4_1_regions(reader: GGUFReader) -> list[list[int]]:
    """``[offset, nbytes]`` of each Q4_1 tensor's data, in file order, checked not to overlap."""
    regions = sorted(
        [int(t.data_offset), int(t.n_bytes)] for t in reader.tensors if t.tensor_type == GGMLQuantizationType.Q4_1
    )
    limits = [offset for offset, _ in regions[1:]] + [len(reader.data)]
    for (offset, nbytes), limit in zip(regions, limits[: len(regions)], strict=True):
        if nbytes % _Q4_1_BLOCK or offset + nbytes > limit:
            raise ValueError(f"Q4_1 data at {offset} ({nbytes} bytes) is not whole blocks or overlaps what follows")
    return regions


def _deinterleaved_chunks(data: np.ndarray, regions: list[list[int]]) -> Iterator[bytes]:
    """The file's bytes in order, each region's blocks as all their scale pairs followed by all their nibbles."""
    position = 0
    for offset, nbytes in regions:
        yield from _plain_chunks(data, position, offset)
        blocks = data[offset : offset + nbytes].reshape(-1, _Q4_1_BLOCK)
        for columns in (slice(0, _Q4_1_SCALES), slice(_Q4_1_SCALES, _Q4_1_BLOCK)):
            for start in range(0, len(blocks), _CHUNK // _Q4_1_BLOCK):
                yield blocks[start : start + _CHUNK // _Q4_1_BLOCK, columns].tobytes()
        position = offset + nbytes
    yield from _plain_chunks(data, position, len(data))


def _plain_chunks(data: np.ndarray, start: int, stop: int) -> Iterator[bytes]:
    for begin in range(start, stop, _CHUNK):
        yield data[begin : min(begin + _CHUNK, stop)].tobytes()


def _reinterleave(data: np.memmap, regions: list[list[int]]) -> None:
    """Undo :func:`_deinterleaved_chunks` in place, one region at a time (memory: the largest Q4_1 tensor, twice)."""
    for offset, nbytes in regions:
        stored = np.array(data[offset : offset + nbytes])
        n_scales = nbytes // _Q4_1_BLOCK * _Q4_1_SCALES
        blocks = data[offset : offset + nbytes].reshape(-1, _Q4_1_BLOCK)
        blocks[:, :_Q4_1_SCALES] = stored[:n_scales].reshape(-1, _Q4_1_SCALES)
        blocks[:, _Q4_1_SCALES:] = stored[n_scales:].reshape(-1, _Q4_1_BLOCK - _Q4_1_SCALES)
    data.flush()


def _write_header(f: IO[bytes], header: dict[str, Any]) -> None:
    encoded = json.dumps(header).encode()
    f.write(MAGIC + struct.pack("<I", len(encoded)) + encoded)


def _read_header(f: IO[bytes]) -> dict[str, Any]:
    if f.read(len(MAGIC)) != MAGIC:
        raise ValueError(f"{getattr(f, 'name', 'input')} is not a file written by gguf_bundle.pack")
    (length,) = struct.unpack("<I", f.read(4))
    return json.loads(f.read(length))


def _decompressed_chunks(f: IO[bytes]) -> Iterator[bytes]:
    """The xz stream's content, at most ``_CHUNK`` bytes at a time; a truncated or trailing stream is an error."""
    decompressor = lzma.LZMADecompressor(format=lzma.FORMAT_XZ)
    while not decompressor.eof:
        data = f.read(_CHUNK) if decompressor.needs_input else b""
        if decompressor.needs_input and not data:
            raise EOFError(f"{getattr(f, 'name', 'input')}: the xz stream is truncated")
        yield decompressor.decompress(data, max_length=_CHUNK)
    if decompressor.unused_data or f.read(1):
        raise ValueError(f"{getattr(f, 'name', 'input')}: data after the xz stream")


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as f:
        while chunk := f.read(_CHUNK):
            digest.update(chunk)
    return digest.hexdigest()
