"""Alignment of a student's token rows with the teacher's tokenization of the same text, by byte offsets.

For each student row the text bytes are rebuilt from the student's byte table, re-tokenized by the teacher, and the two
tokenizations are cut into *chunks*: a boundary is a byte offset where both end a token, a chunk is the text between
two consecutive boundaries of one segment. Special tokens (and bytes that are not valid UTF-8) split segments, so a
chunk never contains one.
"""

import bisect
import difflib
import re
from dataclasses import dataclass, field
from typing import Any

import torch
from tokenizers import Tokenizer

from .._logging import get_logger
from .vocabulary import token_bytes, tokenizer_hash

logger = get_logger(__name__)

__all__ = ["ALIGNMENT_COLUMNS", "TEACHER_ROW_COLUMNS", "AlignedExample", "TokenAligner"]

ALIGNMENT_COLUMNS = (
    "teacher_input_ids",
    "teacher_attention_mask",
    "student_chunk",
    "teacher_chunk",
    "student_next",
    "chunk_bytes",
)

TEACHER_ROW_COLUMNS = ("teacher_input_ids", "teacher_labels", "content_mask", "teacher_content_mask")
"""Per-row columns `hf_distill.data.tokenize_for_distillation(..., teacher_tokenizer=...)` adds to conversational rows
(ragged lists): the teacher's own rendering of the row (`teacher_input_ids`, `teacher_labels`) and, per token of each
side, 1 where the token lies inside a message's content (`content_mask` for the student's tokens,
`teacher_content_mask`). `TokenAligner.collate_rendered` aligns the two renderings."""

# Element values of the sequences `align_rendered` matches: bytes are 0..255; an EOS token is one element of its own
# (it matches the other side's EOS); every other token outside the text (special, start, markup, invalid UTF-8) is a
# separator, a value the other side never holds.
_EOS = 256
_SEPARATOR = (-1, -2)  # (student, teacher)
# Words the matcher compares (GPT-2-like: a leading space joins its word): far fewer and more distinct elements than
# bytes, so `SequenceMatcher` is fast and never pairs stray letters of two different markups; block edges are then
# extended byte by byte.
_WORDS = re.compile(rb" ?\w+| ?[^\w\s]+|\s+")


@dataclass
class AlignedExample:
    """
    The alignment of one student row (no padding); chunk ids are `0..len(chunk_bytes)-1` in text order.

    Args:
        teacher_ids (`list[int]`): the teacher's tokens for the row's text (with the teacher's start tokens).
        student_chunk (`list[int]`, length = student row): at prediction position `t`, the chunk of student token
            `t+1` (-1: no chunk, or `t` is last).
        teacher_chunk (`list[int]`, length = `len(teacher_ids)`): the same for teacher tokens.
        student_next (`list[int]`): student token `t+1` where `student_chunk[t] != -1`, else -1.
        chunk_bytes (`list[int]`): UTF-8 byte length of each chunk.
    """

    teacher_ids: list[int] = field(default_factory=list)
    student_chunk: list[int] = field(default_factory=list)
    teacher_chunk: list[int] = field(default_factory=list)
    student_next: list[int] = field(default_factory=list)
    chunk_bytes: list[int] = field(default_factory=list)


def _start_tokens(tokenizer: Any) -> list[int]:
    """The ids the tokenizer puts before a text (e.g. Gemma's `<bos>`), found by tokenizing "a" with and without."""
    full = list(tokenizer("a").input_ids)
    bare = list(tokenizer("a", add_special_tokens=False).input_ids)
    for start in range(len(full) - len(bare) + 1):
        if full[start : start + len(bare)] == bare:
            return full[:start]
    return []


def _valid_runs(lengths: list[int], data: bytes, first: int) -> list[tuple[int, int, int, int]]:
    """
    Splits a run of tokens into sub-runs whose bytes are valid UTF-8, dropping every token that covers an invalid byte.

    Returns `(token_start, token_end, byte_start, byte_end)` tuples (tokens relative to `first`, absolute indices).
    """
    try:
        data.decode("utf-8")
        return [(first, first + len(lengths), 0, len(data))]
    except UnicodeDecodeError:
        pass
    bad = bytearray(len(data))
    pos = 0
    while pos < len(data):
        try:
            data[pos:].decode("utf-8")
            break
        except UnicodeDecodeError as error:
            bad[pos + error.start : pos + error.end] = b"\x01" * (error.end - error.start)
            pos += error.end
    runs = []
    offset = 0
    current: list[int] = []  # [token_start, byte_start]
    for k, length in enumerate(lengths):
        tainted = any(bad[offset : offset + length])
        if tainted:
            if current:
                runs.append((current[0], first + k, current[1], offset))
                current = []
        elif not current:
            current = [first + k, offset]
        offset += length
    if current:
        runs.append((current[0], first + len(lengths), current[1], offset))
    out = []
    for t0, t1, b0, b1 in runs:  # a run can still cut a character whose other bytes sat in a dropped token
        for s0, s1, c0, c1 in _valid_runs(lengths[t0 - first : t1 - first], data[b0:b1], t0):
            out.append((s0, s1, b0 + c0, b0 + c1))
    return out


def _chunk_run(
    first: int,
    s_lengths: list[int],
    t_lengths: list[int],
    t_base: int,
    student_token_chunk: list[int],
    t_chunks: list[int],
    chunk_bytes: list[int],
    next_chunk: int,
) -> int:
    """
    Cuts one text run, tokenized both ways, into chunks (a boundary wherever both sides end a token) and numbers them.

    Args:
        first (`int`): row index of the run's first student token; `s_lengths`: byte length of each student token.
        t_lengths (`list[int]`): byte length of each teacher token of the run; `t_base`: row index of the first one.
        student_token_chunk (`list[int]`): per student token of the row, its chunk (written here, -1 elsewhere).
        t_chunks (`list[int]`, length `len(t_lengths)`): per teacher token of the run, its chunk (written here).
        chunk_bytes (`list[int]`): byte length per chunk (appended to).
        next_chunk (`int`): the id the run's first chunk gets.

    Returns:
        `int`: the id the next chunk gets. A chunk whose first token is token 0 of its row on either side (no prediction
        position) is dropped.
    """
    si = ti = 0
    s_pos = t_pos = 0
    chunk_start = 0
    ns, nt = len(s_lengths), len(t_lengths)
    keep = True
    while si < ns or ti < nt:
        if ti >= nt or (si < ns and s_pos <= t_pos):
            if s_pos == chunk_start and t_pos == chunk_start:  # first token of a new chunk
                keep = first + si > 0 and t_base + ti > 0
            s_pos += s_lengths[si]
            if keep:
                student_token_chunk[first + si] = next_chunk
            si += 1
        else:
            t_pos += t_lengths[ti]
            if keep:
                t_chunks[ti] = next_chunk
            ti += 1
        if s_pos == t_pos:
            if keep:
                chunk_bytes.append(s_pos - chunk_start)
                next_chunk += 1
            chunk_start = s_pos
    return next_chunk


class TokenAligner:
    """
    Aligns student token rows with the teacher's tokenization of the same text.

    Segments of text (runs of non-special student tokens) are rebuilt from the student's byte table and tokenized by
    the teacher once per segment (`add_special_tokens=False`, special-token strings inside the text kept as text).
    Student special tokens map to the teacher: the student's start tokens at the row start are replaced by the
    teacher's, EOS -> teacher EOS (the pair is a chunk of its own, of 0 bytes: both models predict the end of the
    text, and on-policy completions end there), pad is skipped, any other special token -> its text tokenized by the teacher (in
    no chunk; a "BOS" is not mapped to the teacher's: SmolLM2's is `<|im_start|>`, a chat marker). Teacher end tokens
    are not added.

    Args:
        student_tokenizer (`PreTrainedTokenizerBase`): the student's fast tokenizer.
        teacher_tokenizer (`PreTrainedTokenizerBase`): the teacher's fast tokenizer.
    """

    def __init__(self, student_tokenizer: Any, teacher_tokenizer: Any):
        self.student_tokenizer = student_tokenizer
        self.teacher_tokenizer = teacher_tokenizer
        self.student_bytes = token_bytes(student_tokenizer)
        self.teacher_bytes = token_bytes(teacher_tokenizer)
        self.student_start = _start_tokens(student_tokenizer)
        self.teacher_start = _start_tokens(teacher_tokenizer)
        self.teacher_pad_id = teacher_tokenizer.pad_token_id if teacher_tokenizer.pad_token_id is not None else 0
        # A private copy of the teacher's backend: no truncation/padding, and special-token strings that happen to be
        # in the text are tokenized as text (the student saw them as text too).
        self._teacher_backend = Tokenizer.from_str(teacher_tokenizer.backend_tokenizer.to_str())
        self._teacher_backend.no_truncation()
        self._teacher_backend.no_padding()
        self._teacher_backend.encode_special_tokens = True
        self._special_cache: dict[int, list[int]] = {}
        # Text segments the teacher's tokenizer did not rebuild byte-exactly (normalized text): counted, warned once.
        self._aligned, self._unaligned = 0, []
        self._skipped_segments, self._warned = 0, False
        self._student_backend: Tokenizer | None = None  # built by `student_row`

    # --- special tokens -------------------------------------------------------------------------------------------
    def _special_to_teacher(self, token: int) -> list[int]:
        cached = self._special_cache.get(token)
        if cached is not None:
            return cached
        student, teacher = self.student_tokenizer, self.teacher_tokenizer
        if token == student.eos_token_id and teacher.eos_token_id is not None:
            ids = [teacher.eos_token_id]
        elif token == student.pad_token_id:
            ids = []
        elif 0 <= token < len(self.student_bytes):
            text = student.convert_ids_to_tokens(token)
            ids = list(teacher(text, add_special_tokens=False).input_ids) if text else []
        else:  # an id past the student's vocabulary (a padded head row): nothing the teacher can read
            ids = []
        self._special_cache[token] = ids
        return ids

    # --- one row --------------------------------------------------------------------------------------------------
    def _plan(self, ids: list[int]) -> list[tuple]:
        """Splits a row into items: `("ids", teacher_ids)` and `("text", token_start, lengths, data)` runs."""
        table = self.student_bytes
        size = len(table)
        items: list[tuple] = []
        start = len(self.student_start) if ids[: len(self.student_start)] == self.student_start else 0
        i, n = start, len(ids)
        while i < n:
            token = ids[i]
            piece = table[token] if 0 <= token < size else None
            if not piece:
                mapped = self._special_to_teacher(token)
                if token == self.student_tokenizer.eos_token_id and mapped:  # EOS <-> EOS: a chunk of its own
                    items.append(("eos", i, mapped))
                else:
                    items.append(("ids", mapped))
                i += 1
                continue
            j = i
            lengths: list[int] = []
            pieces: list[bytes] = []
            while j < n:
                token = ids[j]
                piece = table[token] if 0 <= token < size else None
                if not piece:
                    break
                lengths.append(len(piece))
                pieces.append(piece)
                j += 1
            data = b"".join(pieces)
            for t0, t1, b0, b1 in _valid_runs(lengths, data, i):
                items.append(("text", t0, lengths[t0 - i : t1 - i], data[b0:b1]))
            i = j
        return items

    def _assemble(self, ids: list[int], items: list[tuple], encodings: list[list[int]]) -> AlignedExample:
        teacher_ids = list(self.teacher_start)
        n = len(ids)
        student_token_chunk = [-1] * n
        teacher_token_chunk = [-1] * len(teacher_ids)
        chunk_bytes: list[int] = []
        # Chunk ids are given in text order; a chunk starting at token 0 on either side is dropped (no prediction).
        next_chunk = 0
        texts = iter(encodings)
        tbytes = self.teacher_bytes
        tsize = len(tbytes)
        for item in items:
            if item[0] == "ids":
                teacher_ids.extend(item[1])
                teacher_token_chunk.extend([-1] * len(item[1]))
                continue
            if item[0] == "eos":  # the end of the text is a prediction both models make: its own chunk, of 0 bytes
                _, index, mapped = item
                keep = index > 0 and len(teacher_ids) > 0
                teacher_token_chunk.extend([next_chunk if keep else -1] + [-1] * (len(mapped) - 1))
                teacher_ids.extend(mapped)
                if keep:
                    student_token_chunk[index] = next_chunk
                    chunk_bytes.append(0)
                    next_chunk += 1
                continue
            _, first, s_lengths, data = item
            t_ids = next(texts)
            t_pieces = [tbytes[t] if 0 <= t < tsize else None for t in t_ids]
            t_lengths = _teacher_lengths(data, t_pieces)
            t_base = len(teacher_ids)
            teacher_ids.extend(t_ids)
            if t_lengths is None:  # not rebuilt byte-exactly: the teacher reads it, nothing of it is distilled
                self._unaligned.append((data, t_pieces))
                teacher_token_chunk.extend([-1] * len(t_ids))
                continue
            self._aligned += 1
            t_chunks = [-1] * len(t_ids)
            next_chunk = _chunk_run(
                first, s_lengths, t_lengths, t_base, student_token_chunk, t_chunks, chunk_bytes, next_chunk
            )
            teacher_token_chunk.extend(t_chunks)
        return self._example(ids, teacher_ids, student_token_chunk, teacher_token_chunk, chunk_bytes)

    @staticmethod
    def _example(
        ids: list[int], teacher_ids: list[int], s_tok: list[int], t_tok: list[int], chunk_bytes: list[int]
    ) -> AlignedExample:
        # Prediction position t predicts token t+1.
        student_chunk = s_tok[1:] + [-1] if s_tok else []
        teacher_chunk = t_tok[1:] + [-1] if t_tok else []
        student_next = [ids[t + 1] if c >= 0 else -1 for t, c in enumerate(student_chunk)]
        return AlignedExample(teacher_ids, student_chunk, teacher_chunk, student_next, chunk_bytes)

    def _mismatch(self, data: bytes, t_pieces: list[bytes | None]) -> None:
        raise ValueError(self._describe_mismatch(data, t_pieces) + ", so the two tokenizations cannot be aligned")

    def _describe_mismatch(self, data: bytes, t_pieces: list[bytes | None]) -> str:
        offset = 0
        for piece in t_pieces:
            if piece is None or data[offset : offset + len(piece)] != piece:
                if piece is not None:
                    while offset < len(data) and piece and data[offset] == piece[0]:
                        offset, piece = offset + 1, piece[1:]
                break
            offset += len(piece)
        return (
            f"The teacher tokenizer ({type(self.teacher_tokenizer).__name__}, "
            f"{getattr(self.teacher_tokenizer, 'name_or_path', '')!r}) does not tokenize text byte-exactly: its tokens "
            f"differ from the text {data[:80]!r} at byte offset {offset} (a normalizer changed the text)"
        )

    def _align_many(self, rows: list[list[int]]) -> list[AlignedExample]:
        self._aligned, self._unaligned = 0, []
        out = self._align_rows(rows)
        if self._unaligned:
            data, pieces = self._unaligned[0]
            if not self._aligned:  # nothing of this batch could be aligned: this tokenizer, not one odd text
                self._mismatch(data, pieces)
            self._skipped_segments += len(self._unaligned)
            if not self._warned:
                self._warned = True
                logger.warning(
                    f"{self._describe_mismatch(data, pieces)}. Such text segments are read by the teacher but not "
                    "distilled (the rest of their rows is); normalize the data (e.g. NFC) to distil them too. "
                    "Counted in `TokenAligner.skipped_segments`."
                )
        return out

    @property
    def skipped_segments(self) -> int:
        """Text segments so far that the teacher's tokenizer did not rebuild byte-exactly (so not distilled)."""
        return self._skipped_segments

    def _align_rows(self, rows: list[list[int]]) -> list[AlignedExample]:
        plans = [self._plan(ids) for ids in rows]
        texts = [item[3].decode("utf-8") for plan in plans for item in plan if item[0] == "text"]
        encode = getattr(self._teacher_backend, "encode_batch_fast", self._teacher_backend.encode_batch)
        encoded = [e.ids for e in encode(texts, add_special_tokens=False)] if texts else []
        out, k = [], 0
        for ids, plan in zip(rows, plans):
            count = sum(1 for item in plan if item[0] == "text")
            out.append(self._assemble(ids, plan, encoded[k : k + count]))
            k += count
        return out

    # --- both rows given (a teacher cache holds the teacher's own tokens) ----------------------------------------------
    def _split(self, ids: list[int], table: list[bytes | None], start: list[int], eos: int | None) -> list[tuple]:
        """Splits one side's row into `("text", token_start, lengths, data)` runs, `("eos", index)` and
        `("special", index)` items; its start tokens at the row start are no item."""
        size = len(table)
        items: list[tuple] = []
        i = len(start) if start and ids[: len(start)] == start else 0
        n = len(ids)
        while i < n:
            piece = table[ids[i]] if 0 <= ids[i] < size else None
            if not piece:
                items.append(("eos" if ids[i] == eos else "special", i))
                i += 1
                continue
            j = i
            lengths: list[int] = []
            while j < n and 0 <= ids[j] < size and table[ids[j]]:
                lengths.append(len(table[ids[j]]))
                j += 1
            data = b"".join(table[t] for t in ids[i:j])
            for t0, t1, b0, b1 in _valid_runs(lengths, data, i):
                items.append(("text", t0, lengths[t0 - i : t1 - i], data[b0:b1]))
            i = j
        return items

    def _teacher_items(self, teacher_ids: list[int]) -> list[tuple]:
        return self._split(teacher_ids, self.teacher_bytes, self.teacher_start, self.teacher_tokenizer.eos_token_id)

    def align_pair(self, student_ids: list[int], teacher_ids: list[int]) -> AlignedExample:
        """
        Aligns a student row with the teacher's own tokenization of the same text, both given (nothing is
        re-tokenized): what a teacher cache that stores the teacher's token ids needs.

        Each side is split into text runs (between special tokens) and EOS tokens. The runs must hold the same bytes
        in the same order on both sides, and the EOS tokens pair up (a chunk of 0 bytes each, as in `align`); other
        special tokens (and the start tokens at a row's start) are in no chunk. The chunks are those `align` cuts.

        Args:
            student_ids (`list[int]`): the student's row (no padding).
            teacher_ids (`list[int]`): the teacher's row of the same text (no padding).

        Returns:
            [`AlignedExample`] whose `teacher_ids` is `teacher_ids`.

        Raises:
            `ValueError`: when the two rows do not hold the same text runs (naming the first difference).
        """
        student_ids, teacher_ids = list(student_ids), list(teacher_ids)
        student = self._split(student_ids, self.student_bytes, self.student_start, self.student_tokenizer.eos_token_id)
        teacher = self._teacher_items(teacher_ids)
        student = [item for item in student if item[0] != "special"]
        teacher = [item for item in teacher if item[0] != "special"]
        student, teacher = _matched_runs(student, teacher)
        for k in range(max(len(student), len(teacher))):
            s_item = student[k] if k < len(student) else None
            t_item = teacher[k] if k < len(teacher) else None
            same = s_item is not None and t_item is not None and s_item[0] == t_item[0]
            if same and s_item[0] == "text":
                same = s_item[3] == t_item[3]
            if not same:

                def show(item):
                    return "nothing" if item is None else "EOS" if item[0] == "eos" else repr(item[3][:60])

                raise ValueError(
                    f"The student row and the teacher row do not hold the same text: run {k} is {show(s_item)} for "
                    f"the student and {show(t_item)} for the teacher (special tokens other than start and EOS "
                    "split the text, so both rows need them at the same places)."
                )
        s_tok = [-1] * len(student_ids)
        t_tok = [-1] * len(teacher_ids)
        chunk_bytes: list[int] = []
        next_chunk = 0
        for s_item, t_item in zip(student, teacher):
            if s_item[0] == "eos":  # both models predict the end of the text: a chunk of 0 bytes
                if s_item[1] > 0 and t_item[1] > 0:
                    s_tok[s_item[1]] = t_tok[t_item[1]] = next_chunk
                    chunk_bytes.append(0)
                    next_chunk += 1
                continue
            t_first, t_lengths = t_item[1], t_item[2]
            t_chunks = [-1] * len(t_lengths)
            next_chunk = _chunk_run(s_item[1], s_item[2], t_lengths, t_first, s_tok, t_chunks, chunk_bytes, next_chunk)
            t_tok[t_first : t_first + len(t_lengths)] = t_chunks
        return self._example(student_ids, teacher_ids, s_tok, t_tok, chunk_bytes)

    def student_row(
        self, teacher_ids: list[int], teacher_labels: list[int] | None = None
    ) -> tuple[list[int], list[int] | None]:
        """
        The student's tokenization of the text of a teacher row: the row's text runs rebuilt from the teacher's byte
        table and tokenized by the student (each run on its own, special-token strings in the text kept as text), the
        teacher's start tokens replaced by the student's, EOS by the student's EOS, and any other teacher special token
        by the student's special token of the same text, or by nothing when the student has none (a `<bos>` inside a
        row of grouped text is no text). `align_pair` pairs the result with `teacher_ids`.

        Args:
            teacher_ids (`list[int]`): the teacher's row (no padding).
            teacher_labels (`list[int]`, *optional*): its labels (-100 where a token is no target).

        Returns:
            `(student_ids, student_labels)`: a student token is a target when every byte of it lies in a teacher
            target token; the start tokens are no targets; `student_labels` is `None` without `teacher_labels`.
        """
        if self._student_backend is None:
            backend = Tokenizer.from_str(self.student_tokenizer.backend_tokenizer.to_str())
            backend.no_truncation()
            backend.no_padding()
            backend.encode_special_tokens = True
            self._student_backend = backend
        student_specials = {
            token.content: i
            for i, token in self.student_tokenizer.backend_tokenizer.get_added_tokens_decoder().items()
            if token.special
        }
        ids = list(self.student_start)
        labels = [-100] * len(ids)
        items = self._teacher_items(list(teacher_ids))
        texts = [item[3].decode("utf-8") for item in items if item[0] == "text"]
        encode = getattr(self._student_backend, "encode_batch_fast", self._student_backend.encode_batch)
        encoded = iter([e.ids for e in encode(texts, add_special_tokens=False)] if texts else [])
        table = self.student_bytes
        for item in items:
            if item[0] == "text":
                run = next(encoded)
                ids.extend(run)
                if teacher_labels is None:
                    continue
                target = bytearray()  # per byte of the run: 1 where its teacher token is a target
                for k, length in enumerate(item[2]):
                    target += bytes([teacher_labels[item[1] + k] != -100]) * length
                offset = 0
                for token in run:
                    length = len(table[token] or b"")
                    labels.append(token if all(target[offset : offset + length]) else -100)
                    offset += length
                continue
            token = teacher_ids[item[1]]
            if item[0] == "eos":
                mapped = self.student_tokenizer.eos_token_id
            else:
                content = self.teacher_tokenizer.convert_ids_to_tokens(token)
                mapped = student_specials.get(content)
                if mapped is None:  # (a `<bos>` inside grouped text): not text, so the student reads nothing here
                    continue
            ids.append(mapped)
            if teacher_labels is not None:
                labels.append(mapped if teacher_labels[item[1]] != -100 else -100)
        return ids, None if teacher_labels is None else labels

    # --- two renderings of the same messages (each side's own chat template) ------------------------------------
    def _elements(self, side: int, ids: list[int], content: list[int] | None) -> tuple:
        """One side's row as matcher input: `(elements, token_start, token_end, words, word_start)`: the element
        sequence (bytes, `_EOS`, separators), each token's `[start, end)` in it, and its words with their element
        offsets (plus a final end offset)."""
        if side == 0:
            table, start, eos = self.student_bytes, self.student_start, self.student_tokenizer.eos_token_id
        else:
            table, start, eos = self.teacher_bytes, self.teacher_start, self.teacher_tokenizer.eos_token_id
        n = len(ids)
        eos_mark = object()
        pieces: list[Any] = [None] * n  # bytes of a text token, `eos_mark`, or None (a separator)
        for item in self._split(ids, table, start, eos):
            if item[0] == "text":
                for k in range(item[1], item[1] + len(item[2])):
                    if content is None or content[k]:
                        pieces[k] = table[ids[k]]
            elif item[0] == "eos":
                pieces[item[1]] = eos_mark
        separator = _SEPARATOR[side]
        separator_word = ("separator", side)
        elements: list[int] = []
        token_start = [0] * n
        token_end = [0] * n
        words: list[Any] = []
        word_start: list[int] = []
        stretch = bytearray()
        stretch_start = 0

        def flush() -> None:
            for match in _WORDS.finditer(stretch):
                words.append(match.group())
                word_start.append(stretch_start + match.start())
            stretch.clear()

        for k in range(n):
            token_start[k] = len(elements)
            piece = pieces[k]
            if piece is None or piece is eos_mark:
                flush()
                words.append(("eos",) if piece is eos_mark else separator_word)
                word_start.append(len(elements))
                elements.append(_EOS if piece is eos_mark else separator)
            else:
                if not stretch:
                    stretch_start = len(elements)
                stretch += piece
                elements.extend(piece)
            token_end[k] = len(elements)
        flush()
        word_start.append(len(elements))
        return elements, token_start, token_end, words, word_start

    @staticmethod
    def _matched_blocks(student: tuple, teacher: tuple) -> list[tuple[int, int, int]]:
        """`(student_start, teacher_start, length)` element ranges holding the same elements, in text order: word
        blocks of `difflib.SequenceMatcher(autojunk=False)`, extended byte by byte at both edges, adjacent ones
        merged."""
        s_el, t_el = student[0], teacher[0]
        s_words, s_pos, t_words, t_pos = student[3], student[4], teacher[3], teacher[4]
        if s_words == t_words:
            raw = [(0, 0, len(s_el))] if s_el else []
        else:
            matcher = difflib.SequenceMatcher(None, s_words, t_words, autojunk=False)
            raw = [
                (s_pos[i], t_pos[j], s_pos[i + size] - s_pos[i])
                for i, j, size in matcher.get_matching_blocks()
                if size
            ]
        blocks: list[list[int]] = []
        for k, (a0, b0, length) in enumerate(raw):
            a1, b1 = a0 + length, b0 + length
            low_a, low_b = (blocks[-1][1], blocks[-1][3]) if blocks else (0, 0)
            while a0 > low_a and b0 > low_b and s_el[a0 - 1] == t_el[b0 - 1]:
                a0, b0 = a0 - 1, b0 - 1
            high_a, high_b = (raw[k + 1][0], raw[k + 1][1]) if k + 1 < len(raw) else (len(s_el), len(t_el))
            while a1 < high_a and b1 < high_b and s_el[a1] == t_el[b1]:
                a1, b1 = a1 + 1, b1 + 1
            if blocks and blocks[-1][1] == a0 and blocks[-1][3] == b0:
                blocks[-1][1], blocks[-1][3] = a1, b1
            else:
                blocks.append([a0, a1, b0, b1])
        return [(a0, b0, a1 - a0) for a0, a1, b0, _ in blocks]

    def align_rendered(
        self,
        student_ids: list[int],
        teacher_ids: list[int],
        student_content: list[int] | None = None,
        teacher_content: list[int] | None = None,
    ) -> AlignedExample:
        """
        Aligns a student row with a teacher row whose text may differ around a shared text: the same messages
        rendered by each model's own chat template (different markup, the same contents).

        Each side becomes a sequence of bytes in which every token that is not text (special tokens, the start
        tokens, tokens of invalid UTF-8, and tokens outside the contents when masks are given) is a separator that
        matches nothing, and EOS is one element that matches the other side's EOS. The two sequences are matched with
        `difflib.SequenceMatcher(autojunk=False)` over words (a leading space joins its word), whose blocks are then
        extended byte by byte and merged when adjacent; chunks are cut only inside matched blocks, at offsets where
        both tokenizations end a token (a token straddling a block edge is in no chunk), and numbered in text order.
        A chunk whose first token is token 0 on either side is dropped, and a pair of EOS tokens is a chunk of 0
        bytes, as in `align`. Rows of the same text (e.g. the teacher row `align` builds) give exactly `align`'s
        chunks.

        Args:
            student_ids (`list[int]`): the student's row (no padding).
            teacher_ids (`list[int]`): the teacher's row (no padding).
            student_content (`list[int]`, *optional*, length `len(student_ids)`): 1 on the tokens that may be in a
                chunk (inside a message's content); `None`: every text token.
            teacher_content (`list[int]`, *optional*, length `len(teacher_ids)`): the same for the teacher's tokens.

        Returns:
            [`AlignedExample`] whose `teacher_ids` is `teacher_ids`.
        """
        student_ids, teacher_ids = list(student_ids), list(teacher_ids)
        for name, mask, ids in (("student", student_content, student_ids), ("teacher", teacher_content, teacher_ids)):
            if mask is not None and len(mask) != len(ids):
                raise ValueError(f"The {name} content mask has {len(mask)} entries for a row of {len(ids)} tokens.")
        student = self._elements(0, student_ids, student_content)
        teacher = self._elements(1, teacher_ids, teacher_content)
        s_start, s_end, t_start, t_end = student[1], student[2], teacher[1], teacher[2]
        s_el = student[0]
        s_tok = [-1] * len(student_ids)
        t_tok = [-1] * len(teacher_ids)
        chunk_bytes: list[int] = []
        next_chunk = 0
        for a0, b0, length in self._matched_blocks(student, teacher):
            # the tokens lying wholly inside the block, on each side
            si, si_end = bisect.bisect_left(s_start, a0), bisect.bisect_right(s_end, a0 + length)
            ti, ti_end = bisect.bisect_left(t_start, b0), bisect.bisect_right(t_end, b0 + length)
            if si >= si_end or ti >= ti_end:
                continue
            # walk both token sequences in block offsets; a boundary is where both end a token
            s_pos, t_pos = s_start[si] - a0, t_start[ti] - b0
            while si < si_end and ti < ti_end:
                if s_pos != t_pos:  # skip to the next common start: tokens before it are in no chunk
                    if s_pos < t_pos:
                        s_pos = s_end[si] - a0
                        si += 1
                    else:
                        t_pos = t_end[ti] - b0
                        ti += 1
                    continue
                chunk_start, first_s, first_t = s_pos, si, ti
                s_pos, t_pos = s_end[si] - a0, t_end[ti] - b0
                si, ti = si + 1, ti + 1
                while s_pos != t_pos:
                    if s_pos < t_pos:
                        if si >= si_end:
                            break
                        s_pos = s_end[si] - a0
                        si += 1
                    else:
                        if ti >= ti_end:
                            break
                        t_pos = t_end[ti] - b0
                        ti += 1
                if s_pos != t_pos:  # the block ends inside a token: no chunk
                    break
                if first_s > 0 and first_t > 0:
                    s_tok[first_s:si] = [next_chunk] * (si - first_s)
                    t_tok[first_t:ti] = [next_chunk] * (ti - first_t)
                    span = s_el[a0 + chunk_start : a0 + s_pos]
                    chunk_bytes.append(len(span) - span.count(_EOS))
                    next_chunk += 1
        return self._example(student_ids, teacher_ids, s_tok, t_tok, chunk_bytes)

    # --- public ---------------------------------------------------------------------------------------------------
    def align(self, student_ids: list[int]) -> AlignedExample:
        """
        Aligns one student row.

        Args:
            student_ids (`list[int]`): the row's token ids, every one of them text (no padding).

        Returns:
            [`AlignedExample`]
        """
        return self._align_many([list(student_ids)])[0]

    def collate(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None) -> dict[str, torch.Tensor]:
        """
        Aligns a batch of student rows.

        Args:
            input_ids (`torch.LongTensor` of shape `(B, T_s)`): student rows, left- or right-padded.
            attention_mask (`torch.LongTensor` of shape `(B, T_s)`, *optional*): 1 on the real tokens, which must be
                one contiguous block per row. Defaults to all ones.

        Returns:
            `dict[str, torch.LongTensor]` with the [`ALIGNMENT_COLUMNS`]: `teacher_input_ids` and
            `teacher_attention_mask` `(B, T_t)` (right-padded with the teacher's pad id), `student_chunk` and
            `student_next` `(B, T_s)` (indexed by the positions of `input_ids`), `teacher_chunk` `(B, T_t)`,
            `chunk_bytes` `(B, C)`.
        """
        rows, starts = self._unpadded(input_ids, attention_mask)
        return self._pack(self._align_many(rows), starts, input_ids.shape[1])

    def collate_rendered(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor | None,
        teacher_rows: list[list[int]],
        student_content: list[list[int] | None] | None = None,
        teacher_content: list[list[int] | None] | None = None,
    ) -> dict[str, torch.Tensor]:
        """
        Aligns a batch of student rows with the given teacher rows (`align_rendered` per row): what conversational
        rows rendered by each model's own chat template need (`TEACHER_ROW_COLUMNS`).

        Args:
            input_ids (`torch.LongTensor` of shape `(B, T_s)`): student rows, left- or right-padded.
            attention_mask (`torch.LongTensor` of shape `(B, T_s)`, *optional*): as in `collate`.
            teacher_rows (`list[list[int]]`, `B` rows): the teacher's rows (no padding).
            student_content (`list`, *optional*): per row, the student content mask of its real tokens (or `None`).
            teacher_content (`list`, *optional*): per row, the teacher content mask (or `None`).

        Returns:
            `dict[str, torch.LongTensor]` with the [`ALIGNMENT_COLUMNS`], as `collate` (teacher rows right-padded).
        """
        rows, starts = self._unpadded(input_ids, attention_mask)
        if len(teacher_rows) != len(rows):
            raise ValueError(f"{len(teacher_rows)} teacher rows for a batch of {len(rows)} student rows")
        none = [None] * len(rows)
        examples = [
            self.align_rendered(row, teacher, s_mask, t_mask)
            for row, teacher, s_mask, t_mask in zip(
                rows, teacher_rows, student_content or none, teacher_content or none
            )
        ]
        return self._pack(examples, starts, input_ids.shape[1])

    @staticmethod
    def _unpadded(input_ids: torch.Tensor, attention_mask: torch.Tensor | None) -> tuple[list[list[int]], list[int]]:
        """The real tokens of each row and where they start (`attention_mask` must be one contiguous block)."""
        if input_ids.dim() != 2:
            raise ValueError(f"`input_ids` must be (batch, tokens), got shape {tuple(input_ids.shape)}")
        batch = input_ids.shape[0]
        rows = input_ids.tolist()
        starts = [0] * batch
        if attention_mask is not None:
            masks = attention_mask.tolist()
            for b, mask in enumerate(masks):
                real = [t for t, m in enumerate(mask) if m]
                if real and real[-1] - real[0] + 1 != len(real):
                    raise ValueError(
                        f"attention_mask row {b} has holes: cross-tokenizer alignment needs the real tokens of a row "
                        "to be one contiguous block (left or right padding)"
                    )
                starts[b] = real[0] if real else 0
                rows[b] = rows[b][starts[b] : starts[b] + len(real)]
        return rows, starts

    def _pack(self, examples: list[AlignedExample], starts: list[int], length: int) -> dict[str, torch.Tensor]:
        """The [`ALIGNMENT_COLUMNS`] of aligned rows: student columns placed at each row's `start`, teacher rows
        right-padded."""
        batch = len(examples)
        t_len = max((len(e.teacher_ids) for e in examples), default=0)
        c_len = max((len(e.chunk_bytes) for e in examples), default=0)
        teacher_input_ids = torch.full((batch, t_len), self.teacher_pad_id, dtype=torch.long)
        teacher_attention_mask = torch.zeros((batch, t_len), dtype=torch.long)
        teacher_chunk = torch.full((batch, t_len), -1, dtype=torch.long)
        student_chunk = torch.full((batch, length), -1, dtype=torch.long)
        student_next = torch.full((batch, length), -1, dtype=torch.long)
        chunk_bytes = torch.zeros((batch, c_len), dtype=torch.long)
        for b, example in enumerate(examples):
            n_t, n_s, start = len(example.teacher_ids), len(example.student_chunk), starts[b]
            if n_t:
                teacher_input_ids[b, :n_t] = torch.tensor(example.teacher_ids, dtype=torch.long)
                teacher_attention_mask[b, :n_t] = 1
                teacher_chunk[b, :n_t] = torch.tensor(example.teacher_chunk, dtype=torch.long)
            if n_s:
                student_chunk[b, start : start + n_s] = torch.tensor(example.student_chunk, dtype=torch.long)
                student_next[b, start : start + n_s] = torch.tensor(example.student_next, dtype=torch.long)
            if example.chunk_bytes:
                chunk_bytes[b, : len(example.chunk_bytes)] = torch.tensor(example.chunk_bytes, dtype=torch.long)
        return {
            "teacher_input_ids": teacher_input_ids,
            "teacher_attention_mask": teacher_attention_mask,
            "student_chunk": student_chunk,
            "teacher_chunk": teacher_chunk,
            "student_next": student_next,
            "chunk_bytes": chunk_bytes,
        }


def alignment_record(method: str, aligner: TokenAligner, shared_tokens: int) -> dict[str, Any]:
    """The lineage's record of a cross-tokenizer alignment: the method, the shared tokens and both tokenizers (by
    content hash, `tokenizer_hash`)."""
    return {
        "method": method,
        "student_tokenizer_sha256": tokenizer_hash(aligner.student_tokenizer),
        "teacher_tokenizer_sha256": tokenizer_hash(aligner.teacher_tokenizer),
        "shared_tokens": shared_tokens,
    }


def _teacher_lengths(data: bytes, pieces: list[bytes | None]) -> list[int] | None:
    """Byte lengths of the teacher's tokens of a text segment `data`, `None` when they do not rebuild it. A space the
    teacher's normalizer put in front (SentencePiece's dummy prefix, Llama 2's `▁`) belongs to no byte of the text: its
    first token is one byte shorter."""
    if None in pieces:
        return None
    joined = b"".join(pieces)
    lengths = [len(p) for p in pieces]
    if joined == data:
        return lengths
    if pieces and joined == b" " + data and pieces[0].startswith(b" "):
        lengths[0] -= 1
        return lengths
    return None


def _cut_run(item: tuple, size: int) -> tuple[tuple, tuple] | None:
    """A text run `("text", first token, token byte lengths, bytes)` cut after its first `size` bytes, when a token
    ends there; `None` otherwise."""
    _, first, lengths, data = item
    total = 0
    for k, length in enumerate(lengths):
        total += length
        if total == size:
            return ("text", first, lengths[: k + 1], data[:size]), (
                "text",
                first + k + 1,
                lengths[k + 1 :],
                data[size:],
            )
        if total > size:
            return None
    return None


def _matched_runs(student: list[tuple], teacher: list[tuple]) -> tuple[list[tuple], list[tuple]]:
    """Both sides' runs, a run cut where the other side has two: a teacher special token the student has no token
    for (a `<bos>` inside a row of grouped text) splits the teacher's text but not the student's."""
    student, teacher = list(student), list(teacher)
    k = 0
    while k < min(len(student), len(teacher)):
        a, b = student[k], teacher[k]
        if a[0] == b[0] == "text" and len(a[3]) != len(b[3]):
            longer, shorter = (student, teacher) if len(a[3]) > len(b[3]) else (teacher, student)
            if longer[k][3].startswith(shorter[k][3]):
                parts = _cut_run(longer[k], len(shorter[k][3]))
                if parts is not None:
                    longer[k : k + 1] = list(parts)
        k += 1
    return student, teacher
