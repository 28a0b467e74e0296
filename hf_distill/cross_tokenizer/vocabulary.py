"""Byte tables of tokenizers and the vocabulary two tokenizers share.

Every non-special token of a byte-level BPE (GPT-2 byte alphabet) or SentencePiece-style (`▁` for a space, `<0xNN>`
byte fallback) tokenizer stands for an exact byte string, so a row of token ids can be turned back into the exact
bytes of its text without decoding heuristics. WordPiece drops whitespace (`##` continuations), so it is refused.
"""

import hashlib
import json
import re
import threading
import weakref
from dataclasses import dataclass
from typing import Any

import torch

__all__ = ["SharedVocabulary", "is_byte_level", "token_bytes", "tokenizer_hash"]

_BYTE_FALLBACK = re.compile(r"<0x([0-9A-Fa-f]{2})>")
_LOCK = threading.Lock()
# tokenizer object -> (len(tokenizer), hash): `backend.to_str()` of a 262k-token table costs ~0.3 s, too much per call.
_HASHES: "weakref.WeakKeyDictionary[Any, tuple[int, str]]" = weakref.WeakKeyDictionary()
_TABLES: dict[tuple, list[bytes | None]] = {}
_SHARED: dict[tuple, "SharedVocabulary"] = {}


def _backend(tokenizer: Any) -> Any:
    backend = getattr(tokenizer, "backend_tokenizer", None)
    if backend is None:
        raise ValueError(
            f"{type(tokenizer).__name__} has no `backend_tokenizer`: cross-tokenizer distillation needs a fast "
            "(`tokenizers`-backed) tokenizer to rebuild text byte-exactly"
        )
    return backend


def _bytes_to_unicode() -> dict[int, str]:
    """GPT-2's reversible byte -> printable character map (the alphabet of byte-level BPE vocabularies)."""
    printable = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1))
    printable += list(range(ord("®"), ord("ÿ") + 1))
    chars = printable[:]
    extra = 0
    for b in range(256):
        if b not in printable:
            printable.append(b)
            chars.append(256 + extra)
            extra += 1
    return dict(zip(printable, (chr(c) for c in chars)))


_BYTE_DECODER = {char: byte for byte, char in _bytes_to_unicode().items()}


def _components(spec: dict | None) -> list[dict]:
    """Flattens a pre-tokenizer/decoder spec (possibly a `Sequence`) into its components."""
    if not spec:
        return []
    inner = spec.get("pretokenizers") or spec.get("decoders")
    if spec.get("type") == "Sequence" and inner is not None:
        return [c for part in inner for c in _components(part)]
    return [spec]


def is_byte_level(spec: dict) -> bool:
    """
    Whether a backend tokenizer spec (`json.loads(backend.to_str())`, or a dict with its `pre_tokenizer` and
    `decoder` entries) uses the GPT-2 byte alphabet: its pre-tokenizer or decoder is `ByteLevel`.
    """
    parts = _components(spec.get("pre_tokenizer")) + _components(spec.get("decoder"))
    return any(part.get("type") == "ByteLevel" for part in parts)


def tokenizer_hash(tokenizer: Any) -> str:
    """
    Returns `"sha256:<hex>"` of the backend tokenizer's JSON: equal for reloads of the same tokenizer, different for
    different vocabularies, merges, normalizers or added tokens.

    Args:
        tokenizer (`PreTrainedTokenizerBase`): a fast tokenizer.

    Returns:
        `str`: the hash, cached per tokenizer object (recomputed when tokens are added).
    """
    backend = _backend(tokenizer)
    size = len(tokenizer)
    try:
        cached = _HASHES.get(tokenizer)
    except TypeError:  # not weak-referenceable: no per-object cache
        cached = None
    if cached is not None and cached[0] == size:
        return cached[1]
    # Truncation and padding are call settings the tokenizer's own `__call__` changes on the backend: not identity.
    state = json.loads(backend.to_str())
    state.pop("truncation", None)
    state.pop("padding", None)
    digest = "sha256:" + hashlib.sha256(json.dumps(state, sort_keys=True).encode("utf-8")).hexdigest()
    try:
        _HASHES[tokenizer] = (size, digest)
    except TypeError:
        pass
    return digest


def _spec(component: Any) -> dict | None:
    """The JSON spec of one backend component (pre-tokenizer, decoder): small, unlike the whole tokenizer's JSON."""
    return json.loads(component.__getstate__()) if component is not None else None


def _special_contents(tokenizer: Any) -> dict[int, str]:
    """id -> text of every special (control) token: `all_special_ids` and added tokens marked special."""
    added = _backend(tokenizer).get_added_tokens_decoder()
    specials = {i: token.content for i, token in added.items() if token.special}
    for i in tokenizer.all_special_ids:
        if i is not None and int(i) not in specials:
            specials[int(i)] = tokenizer.convert_ids_to_tokens(int(i))
    return specials


def _build_table(tokenizer: Any) -> list[bytes | None]:
    backend = _backend(tokenizer)
    name = type(tokenizer).__name__
    model = type(backend.model).__name__
    if model == "WordPiece":
        raise ValueError(
            f"{name} uses a WordPiece model: WordPiece drops whitespace (`##` marks continuations), so the text of a "
            "row cannot be rebuilt byte-exactly and cannot be aligned with another tokenizer"
        )
    if model not in ("BPE", "Unigram", "WordLevel"):
        raise ValueError(f"{name}: unsupported tokenizer model {model!r} for cross-tokenizer alignment")
    # `get_vocab` + the component specs avoid parsing the whole JSON (merges make it ~1 s for a 262k vocabulary).
    pieces = backend.get_vocab(with_added_tokens=False)
    spec = {"pre_tokenizer": _spec(backend.pre_tokenizer), "decoder": _spec(backend.decoder)}
    table: list[bytes | None] = [None] * len(tokenizer)
    size = len(table)
    if is_byte_level(spec):
        decoder = _BYTE_DECODER
        for piece, i in pieces.items():
            if i < size:
                # A character outside the byte alphabet (never in GPT-2-style vocabularies) stands for itself.
                table[i] = bytes([decoder[c] for c in piece]) if all(c in decoder for c in piece) else piece.encode()
    else:
        fallback = _BYTE_FALLBACK.fullmatch
        for piece, i in pieces.items():
            if i < size:
                match = fallback(piece) if piece.startswith("<0x") else None
                table[i] = bytes([int(match.group(1), 16)]) if match else piece.replace("▁", " ").encode("utf-8")
    for i, token in backend.get_added_tokens_decoder().items():  # matched on the raw text: they stand for it
        if i < size:
            table[i] = token.content.encode("utf-8")
    # The model's unknown token stands for text it could not represent, not for its own spelling.
    unk = getattr(backend.model, "unk_token", None)
    specials = set(_special_contents(tokenizer)) | ({pieces[unk]} if unk in pieces else set())
    for i in specials:
        if 0 <= i < size:
            table[i] = None
    return table


def _table_key(tokenizer: Any) -> tuple:
    return (tokenizer_hash(tokenizer), len(tokenizer), tuple(sorted(int(i) for i in tokenizer.all_special_ids)))


def token_bytes(tokenizer: Any) -> list[bytes | None]:
    """
    Returns the exact bytes each token id stands for.

    Args:
        tokenizer (`PreTrainedTokenizerBase`): a fast byte-level BPE or SentencePiece-style tokenizer.

    Returns:
        `list[bytes | None]` of length `len(tokenizer)`: `None` for special (control) tokens and ids without a token.
        Cached per tokenizer hash (the list is shared: do not modify it).

    Raises:
        `ValueError`: for a WordPiece tokenizer or one without a `tokenizers` backend.
    """
    key = _table_key(tokenizer)
    with _LOCK:
        table = _TABLES.get(key)
    if table is None:
        table = _build_table(tokenizer)
        with _LOCK:
            table = _TABLES.setdefault(key, table)
    return table


@dataclass(frozen=True)
class SharedVocabulary:
    """
    Buckets of the two vocabularies: token ids of the student and the teacher with identical bytes share a bucket.

    Args:
        student_to_shared (`torch.LongTensor` of shape `(student_size,)`): bucket of each student head row.
        teacher_to_shared (`torch.LongTensor` of shape `(teacher_size,)`): bucket of each teacher head row.
        num_buckets (`int`): `num_shared + has_rest`.
        has_rest (`bool`): whether bucket `num_shared` collects every row outside the shared part.
        num_shared (`int`): number of shared buckets (ids `0..num_shared-1`, ordered by their first student id).
    """

    student_to_shared: torch.Tensor
    teacher_to_shared: torch.Tensor
    num_buckets: int
    has_rest: bool
    num_shared: int

    @classmethod
    def build(
        cls, student_tokenizer: Any, teacher_tokenizer: Any, student_size: int, teacher_size: int
    ) -> "SharedVocabulary":
        """
        Maps both vocabularies onto shared buckets (cached per pair of tokenizer hashes and sizes).

        Non-special tokens with identical bytes share a bucket; the two EOS tokens share one; special tokens with the
        same text share one (so a permuted copy of a vocabulary maps one to one, with no rest bucket). Head rows past
        `len(tokenizer)`, other special tokens and tokens whose bytes the other side lacks go to the rest bucket.

        Args:
            student_tokenizer, teacher_tokenizer (`PreTrainedTokenizerBase`): fast tokenizers.
            student_size, teacher_size (`int`): rows of each model's output head (may exceed `len(tokenizer)`).

        Returns:
            [`SharedVocabulary`]
        """
        key = (_table_key(student_tokenizer), _table_key(teacher_tokenizer), int(student_size), int(teacher_size))
        with _LOCK:
            cached = _SHARED.get(key)
        if cached is not None:
            return cached
        student_keys = _bucket_keys(student_tokenizer, student_size)
        teacher_keys = _bucket_keys(teacher_tokenizer, teacher_size)
        student_map, teacher_map, num_shared = _buckets(
            student_keys, teacher_keys, _token_strings(student_tokenizer), _token_strings(teacher_tokenizer)
        )
        has_rest = num_shared in student_map or num_shared in teacher_map
        shared = cls(
            student_to_shared=torch.tensor(student_map, dtype=torch.long),
            teacher_to_shared=torch.tensor(teacher_map, dtype=torch.long),
            num_buckets=num_shared + int(has_rest),
            has_rest=has_rest,
            num_shared=num_shared,
        )
        with _LOCK:
            return _SHARED.setdefault(key, shared)

    def describe(self) -> str:
        """One line: buckets and the share of each vocabulary's head rows that falls in a shared bucket."""
        student_in = int((self.student_to_shared < self.num_shared).sum())
        teacher_in = int((self.teacher_to_shared < self.num_shared).sum())
        n_s, n_t = len(self.student_to_shared), len(self.teacher_to_shared)
        return (
            f"shared vocabulary: {self.num_shared:,} shared buckets"
            f"{' + 1 rest bucket' if self.has_rest else ' (no rest bucket)'}; "
            f"student {student_in:,}/{n_s:,} rows shared ({100 * student_in / max(n_s, 1):.1f}%), "
            f"teacher {teacher_in:,}/{n_t:,} rows shared ({100 * teacher_in / max(n_t, 1):.1f}%)"
        )


def _token_strings(tokenizer: Any) -> list[str | None]:
    return tokenizer.convert_ids_to_tokens(list(range(len(tokenizer))))


def _buckets(
    student_keys: list[Any], teacher_keys: list[Any], student_strings: list, teacher_strings: list
) -> tuple[list[int], list[int], int]:
    """`(student_map, teacher_map, num_shared)`: the bucket of every head row (`num_shared` = the rest bucket).

    Rows of equal bytes share a bucket, except that where both sides hold several tokens of the same bytes (`x` and
    the byte-fallback `<0x78>` in one SentencePiece vocabulary), tokens of the same string on both sides get a bucket
    of their own: then a vocabulary under a permutation of its ids maps one to one and the exact method is the dense
    objective. Tokens of a byte group without a same-string partner join the group's first bucket (their text is the
    same), so no bucket is empty on one side."""
    student_groups: dict[Any, list[int]] = {}
    teacher_groups: dict[Any, list[int]] = {}
    for groups, keys in ((student_groups, student_keys), (teacher_groups, teacher_keys)):
        for i, k in enumerate(keys):
            if k is not None:
                groups.setdefault(k, []).append(i)
    student_map, teacher_map = [-1] * len(student_keys), [-1] * len(teacher_keys)
    num_shared = 0
    for k, student_ids in student_groups.items():  # numbered by first student id: deterministic
        teacher_ids = teacher_groups.get(k)
        if teacher_ids is None:
            continue
        pairs: dict[Any, int] = {}
        if len(student_ids) > 1 and len(teacher_ids) > 1:
            by_string = {_string(teacher_strings, i): i for i in teacher_ids}
            for i in student_ids:
                if _string(student_strings, i) in by_string and _string(student_strings, i) not in pairs:
                    pairs[_string(student_strings, i)] = num_shared + len(pairs)
        first = num_shared
        for ids, strings, mapping in (
            (student_ids, student_strings, student_map),
            (teacher_ids, teacher_strings, teacher_map),
        ):
            for i in ids:
                mapping[i] = pairs.get(_string(strings, i), first)
        num_shared += max(1, len(pairs))
    student_map = [num_shared if b < 0 else b for b in student_map]
    teacher_map = [num_shared if b < 0 else b for b in teacher_map]
    return student_map, teacher_map, num_shared


def _string(strings: list, i: int) -> Any:
    return strings[i] if i < len(strings) else None


def _bucket_keys(tokenizer: Any, size: int) -> list[Any]:
    """Per head row: the key two vocabularies are matched on (`None`: never shared)."""
    table = token_bytes(tokenizer)
    specials = _special_contents(tokenizer)
    keys: list[Any] = [None] * size
    for i in range(min(size, len(table))):
        if table[i] is not None:
            keys[i] = table[i]
        elif i in specials:
            keys[i] = ("special", specials[i])
    eos = tokenizer.eos_token_id
    if eos is not None and 0 <= eos < size:
        keys[eos] = ("eos",)
    return keys
