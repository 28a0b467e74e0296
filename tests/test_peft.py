"""PEFT students and teachers: adapters train alone, reach the chunked loss through the head, save and reload to the
same logits, merge on request; PEFT, adapter-folder and shared-base teachers; checkpointing, accumulation, resume."""

import importlib.util
import os

import pytest
import torch
from datasets import Dataset
from peft import IA3Config, LoraConfig, PeftModel, get_peft_model
from safetensors.torch import load_file
from tiny_models import collate, examples, llama
from transformers import AutoModelForCausalLM

from hf_distill import DistillationTrainer
from hf_distill.hub.lineage import LINEAGE_FILE, Lineage

BLOCK = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]


def _trainer(training_args, output_dir, student, teacher, peft_config=None, rows=8, **kw):
    return DistillationTrainer(
        model=student,
        teacher_model=teacher,
        args=training_args(output_dir, **{"save_strategy": "no", **kw}),
        data_collator=collate,
        train_dataset=Dataset.from_list(examples("causal_lm", rows)),
        peft_config=peft_config,
    )


def _lora_parameter_count(model, targets, r):
    """r·(in + out) per targeted linear layer, counted from the model's own shapes (not from peft)."""
    return sum(
        r * (m.in_features + m.out_features)
        for name, m in model.named_modules()
        if isinstance(m, torch.nn.Linear) and name.rsplit(".", 1)[-1] in targets
    )


def _logits(model, batch):
    model.eval()
    with torch.no_grad():
        return model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits


# ---- adapter kinds: only the adapter trains, and it trains ----

ADAPTERS = {
    "lora_qv": (lambda: LoraConfig(r=4, target_modules=["q_proj", "v_proj"]), ["q_proj", "v_proj"], 4),
    "lora_all_linear": (lambda: LoraConfig(r=2, target_modules="all-linear"), BLOCK, 2),
    "lora_with_head": (lambda: LoraConfig(r=2, target_modules=[*BLOCK, "lm_head"]), [*BLOCK, "lm_head"], 2),
    "dora": (lambda: LoraConfig(r=2, target_modules=["q_proj", "v_proj"], use_dora=True), None, None),
    "ia3": (
        lambda: IA3Config(target_modules=["k_proj", "v_proj", "down_proj"], feedforward_modules=["down_proj"]),
        None,
        None,
    ),
}


@pytest.mark.parametrize("kind", list(ADAPTERS))
def test_only_the_adapter_trains(tmp_path, kind, training_args):
    make_config, targets, r = ADAPTERS[kind]
    torch.manual_seed(0)
    base, teacher = llama(32, 1), llama(64, 2)
    frozen = {n: p.detach().clone() for n, p in base.named_parameters()}
    expected = None if targets is None else _lora_parameter_count(base, targets, r)
    trainer = _trainer(training_args, tmp_path, base, teacher, make_config(), max_steps=2, learning_rate=1e-2)
    trainable = {n: p for n, p in trainer.model.named_parameters() if p.requires_grad}
    assert trainable and isinstance(trainer.model, PeftModel)
    assert all(("lora_" in n or "ia3_" in n) for n in trainable), sorted(trainable)
    if expected is not None:
        assert sum(p.numel() for p in trainable.values()) == expected
    before = {n: p.detach().clone() for n, p in trainable.items()}
    trainer.train()
    assert any(not torch.equal(p, before[n]) for n, p in trainable.items())  # the adapter moved
    for name, value in trainer.model.get_base_model().named_parameters():  # the base did not
        original = name.replace(".base_layer", "")
        if original in frozen:
            assert torch.equal(value, frozen[original]), name


def test_an_already_wrapped_student_works_and_peft_config_twice_is_refused(tmp_path, training_args):
    student = get_peft_model(llama(32, 1), LoraConfig(r=2, target_modules=["q_proj"]))
    trainer = _trainer(training_args, tmp_path, student, llama(64, 2), max_steps=1)
    assert trainer.model is student
    trainer.train()
    with pytest.raises(ValueError, match="already a PeftModel.*not both"):
        _trainer(training_args, tmp_path, student, llama(64, 2), LoraConfig(r=2, target_modules=["q_proj"]))


def test_adapters_that_target_nothing_name_the_modules_there_are(tmp_path, training_args):
    with pytest.raises(ValueError, match=r"target_modules=\{'qkv'\} matches no module.*'q_proj'"):
        _trainer(training_args, tmp_path, llama(32, 1), llama(64, 2), LoraConfig(r=2, target_modules=["qkv"]))


# ---- the head adapter through the chunked loss ----


def _loss_and_grads(trainer, batch):
    model = trainer.model
    model.train()
    model.zero_grad()
    loss, outputs = trainer.compute_loss(model, batch, return_outputs=True)
    loss.backward()
    grads = {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}
    return loss.detach(), grads, outputs["logits"].shape[-1]


HEAD_ADAPTERS = {
    "lora_on_head": lambda: LoraConfig(r=3, target_modules=["lm_head", "q_proj"], init_lora_weights=False),
    "two_lora_modules_and_bias_free_head": lambda: LoraConfig(
        r=2, lora_alpha=5, target_modules=["lm_head", "down_proj"], init_lora_weights=False
    ),
    "trained_copy_of_head": lambda: LoraConfig(r=2, target_modules=["q_proj"], modules_to_save=["lm_head"]),
}


@pytest.mark.parametrize("kind", list(HEAD_ADAPTERS))
def test_head_adapters_go_through_the_chunked_loss_with_the_logits_path_gradients(tmp_path, kind, training_args):
    batch = collate(examples("causal_lm", 4))
    results = {}
    for chunk in (5, 0):
        torch.manual_seed(0)
        trainer = _trainer(
            training_args,
            tmp_path / str(chunk),
            llama(32, 1),
            llama(64, 2),
            HEAD_ADAPTERS[kind](),
            kd_chunk_size=chunk,
        )
        results[chunk] = _loss_and_grads(trainer, batch)
    (loss_c, grads_c, width_c), (loss_r, grads_r, width_r) = results[5], results[0]
    assert (width_c, width_r) == (0, 97)  # the chunked path really ran for the adapted head
    torch.testing.assert_close(loss_c, loss_r, rtol=1e-5, atol=1e-7)
    head = [n for n in grads_r if "lm_head" in n]
    assert head and all(grads_c[n].abs().max() > 0 for n in head)  # the head adapter learns
    assert grads_c.keys() == grads_r.keys()
    for name, grad in grads_r.items():
        torch.testing.assert_close(grads_c[name], grad, rtol=1e-5, atol=1e-7, msg=name)


def test_dora_on_the_head_falls_back_to_the_logits_path(tmp_path, training_args):
    config = LoraConfig(r=2, target_modules=["lm_head"], use_dora=True)
    trainer = _trainer(training_args, tmp_path, llama(32, 1), llama(64, 2), config)
    assert trainer._chunk_size == 0
    loss, grads, width = _loss_and_grads(trainer, collate(examples("causal_lm", 4)))
    assert width == 97 and torch.isfinite(loss) and any("lm_head" in n for n in grads)


def test_a_peft_teacher_with_a_head_adapter_goes_through_the_chunked_loss(tmp_path, training_args):
    batch = collate(examples("causal_lm", 4))
    results = {}
    for chunk in (4, 0):
        torch.manual_seed(0)
        teacher = get_peft_model(llama(64, 2), LoraConfig(r=2, target_modules=["lm_head"], init_lora_weights=False))
        trainer = _trainer(training_args, tmp_path / str(chunk), llama(32, 1), teacher, kd_chunk_size=chunk)
        results[chunk] = _loss_and_grads(trainer, batch)
    assert (results[4][2], results[0][2]) == (0, 97)
    torch.testing.assert_close(results[4][0], results[0][0], rtol=1e-5, atol=1e-7)
    for name, grad in results[0][1].items():
        torch.testing.assert_close(results[4][1][name], grad, rtol=1e-5, atol=1e-7, msg=name)


# ---- saving: the adapter by default, a merged model on request; both reload to the training logits ----


def _trained_lora_student(training_args, tmp_path, **kw):
    torch.manual_seed(0)
    llama(32, 1).save_pretrained(tmp_path / "base")
    base = AutoModelForCausalLM.from_pretrained(tmp_path / "base")  # a base known by its folder, as in real use
    config = LoraConfig(r=2, target_modules=["q_proj", "v_proj", "lm_head"], init_lora_weights=False)
    trainer = _trainer(
        training_args, tmp_path / "out", base, llama(64, 2), config, max_steps=2, learning_rate=1e-2, **kw
    )
    trainer.train()
    return trainer


def test_saved_adapter_reloads_with_plain_peft_to_identical_logits(tmp_path, training_args):
    trainer = _trained_lora_student(training_args, tmp_path)
    trainer.save_model(str(tmp_path / "saved"))
    files = set(os.listdir(tmp_path / "saved"))
    assert {"adapter_config.json", "adapter_model.safetensors", LINEAGE_FILE} <= files
    assert "model.safetensors" not in files  # the adapter, not a full model
    # LoRA weights, plus the head itself: peft saves a targeted output embedding with its adapter
    assert all("lora_" in k or "lm_head" in k for k in load_file(tmp_path / "saved" / "adapter_model.safetensors"))
    batch = collate(examples("causal_lm", 3))
    reloaded = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(tmp_path / "base"), tmp_path / "saved")
    torch.testing.assert_close(_logits(reloaded, batch), _logits(trainer.model, batch), rtol=0, atol=0)


def test_merge_adapter_on_save_writes_a_full_model_equal_to_the_adapted_one(tmp_path, training_args):
    trainer = _trained_lora_student(training_args, tmp_path, merge_adapter_on_save=True)
    batch = collate(examples("causal_lm", 3))
    expected = _logits(trainer.model, batch)
    trainer.save_model(str(tmp_path / "merged"))
    files = set(os.listdir(tmp_path / "merged"))
    assert "model.safetensors" in files and "adapter_config.json" not in files
    merged = AutoModelForCausalLM.from_pretrained(tmp_path / "merged")  # transformers alone
    assert not any("lora" in n for n, _ in merged.named_parameters())
    torch.testing.assert_close(_logits(merged, batch), expected, rtol=1e-5, atol=1e-5)
    # the trained model keeps its (unmerged) adapters and gives the same logits as before saving
    assert isinstance(trainer.model, PeftModel) and not trainer.model.base_model.model.lm_head.merged
    torch.testing.assert_close(_logits(trainer.model, batch), expected, rtol=0, atol=0)


# ---- teachers: PEFT model, adapter folder, the student's own base ----


def test_teacher_loaded_from_an_adapter_folder_is_base_plus_adapter(tmp_path, training_args):
    torch.manual_seed(0)
    teacher_base = llama(64, 2)
    teacher_base.save_pretrained(tmp_path / "teacher_base")
    adapter = LoraConfig(r=2, target_modules=["q_proj", "lm_head"], init_lora_weights=False)
    teacher = get_peft_model(AutoModelForCausalLM.from_pretrained(tmp_path / "teacher_base"), adapter)
    teacher.save_pretrained(tmp_path / "teacher_adapter")
    trainer = _trainer(training_args, tmp_path / "out", llama(32, 1), str(tmp_path / "teacher_adapter"))
    assert isinstance(trainer.teacher_model, PeftModel)
    assert not any(p.requires_grad for p in trainer.teacher_model.parameters())
    batch = collate(examples("causal_lm", 3))
    torch.testing.assert_close(_logits(trainer.teacher_model, batch), _logits(teacher, batch))
    assert not torch.allclose(_logits(trainer.teacher_model, batch), _logits(teacher_base, batch))


def _storage(parameters):
    return {p.untyped_storage().data_ptr(): p.untyped_storage().nbytes() for p in parameters}


def test_shared_base_teacher_adds_no_weights_and_is_the_base_with_adapters_off(tmp_path, training_args):
    torch.manual_seed(0)
    base = llama(64, 2)
    reference = llama(64, 2)
    reference.load_state_dict(base.state_dict())
    config = LoraConfig(r=2, target_modules=["q_proj", "lm_head"], init_lora_weights=False)
    trainer = _trainer(training_args, tmp_path, base, "base", config, max_steps=2, learning_rate=1e-2)
    teacher = trainer.teacher_model
    assert list(teacher.parameters()) == []  # owns nothing
    student_storage = _storage(trainer.model.parameters())
    with_separate_copy = _storage([*trainer.model.parameters(), *reference.parameters()])
    saved = sum(with_separate_copy.values()) - sum(student_storage.values())
    assert saved == sum(p.numel() * p.element_size() for p in reference.parameters())  # a whole teacher's bytes
    batch = collate(examples("causal_lm", 3))
    trainer.model.train()
    teacher_logits = teacher(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
    assert trainer.model.training  # the student's mode is restored after the teacher's forward
    torch.testing.assert_close(teacher_logits, _logits(reference, batch))
    assert not torch.allclose(_logits(trainer.model, batch), teacher_logits)  # the adapters do change the student
    trainer.train()  # the adapters move; the base, which is the teacher, does not
    after = teacher(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
    torch.testing.assert_close(after, _logits(reference, batch))
    assert trainer.lineage().teacher["kind"] == "shared_base"


def test_shared_base_with_a_fresh_adapter_starts_at_zero_divergence(tmp_path, training_args):
    # Default LoRA init (B = 0): the student *is* its base, so the KD loss of the first batch is exactly 0.
    trainer = _trainer(
        training_args, tmp_path, llama(32, 1), "base", LoraConfig(r=2, target_modules=["q_proj", "lm_head"])
    )
    loss, _, width = _loss_and_grads(trainer, collate(examples("causal_lm", 4)))
    assert width == 0 and abs(loss.item()) < 1e-6


def test_shared_base_teacher_needs_a_peft_student(tmp_path, training_args):
    with pytest.raises(ValueError, match="teacher_model='base'.*not a PEFT adapter model"):
        _trainer(training_args, tmp_path, llama(32, 1), "base")


# ---- training mechanics with a PEFT student ----


def test_activation_checkpointing_gives_the_same_adapter_gradients(tmp_path, training_args):
    batch = collate(examples("causal_lm", 4))
    grads = {}
    for checkpointing in (False, True):
        torch.manual_seed(0)
        config = LoraConfig(r=2, target_modules=["q_proj", "v_proj", "lm_head"], init_lora_weights=False)
        trainer = _trainer(
            training_args,
            tmp_path / str(checkpointing),
            llama(32, 2),
            llama(64, 2),
            config,
            activation_checkpointing=checkpointing,
            max_steps=1,
        )
        trainer.train()  # the Trainer switches checkpointing on in train()
        assert trainer.model.get_base_model().is_activation_checkpointing == checkpointing
        grads[checkpointing] = _loss_and_grads(trainer, batch)[1]
    assert grads[True].keys() == grads[False].keys() and grads[True]
    for name, grad in grads[False].items():
        torch.testing.assert_close(grads[True][name], grad, rtol=1e-5, atol=1e-7, msg=name)


def test_resume_from_checkpoint_continues_exactly_and_saves_no_teacher(tmp_path, training_args):
    def run(out, steps, resume=None):
        torch.manual_seed(0)
        config = LoraConfig(r=2, target_modules=["q_proj", "lm_head"], init_lora_weights=False)
        trainer = _trainer(
            training_args,
            out,
            llama(32, 1),
            llama(64, 2),
            config,
            rows=16,
            max_steps=steps,
            learning_rate=1e-2,
            per_device_train_batch_size=2,
            gradient_accumulation_steps=2,
            logging_steps=1,
            save_strategy="steps",
            save_steps=2,
        )
        if resume:  # other adapter weights: only really loading the checkpoint can give the uninterrupted losses
            with torch.no_grad():
                for parameter in trainer.model.parameters():
                    if parameter.requires_grad:
                        parameter.add_(0.1)
        trainer.train(resume_from_checkpoint=resume)
        return trainer, {e["step"]: e["loss"] for e in trainer.state.log_history if "loss" in e}

    full, full_losses = run(tmp_path / "full", 4)
    checkpoint = tmp_path / "full" / "checkpoint-2"
    weights = load_file(checkpoint / "adapter_model.safetensors")
    assert weights and all("lora_" in k or "lm_head" in k for k in weights)  # the adapter only: no body, no teacher
    assert not any(f.startswith("model") and f.endswith(".safetensors") for f in os.listdir(checkpoint))
    resumed, resumed_losses = run(tmp_path / "resumed", 4, resume=str(checkpoint))
    assert resumed_losses[3] == pytest.approx(full_losses[3], rel=1e-6)
    assert resumed_losses[4] == pytest.approx(full_losses[4], rel=1e-6)
    optimized = {id(p) for group in full.optimizer.param_groups for p in group["params"]}
    assert optimized and not optimized & {id(p) for p in full.teacher_model.parameters()}
    torch.manual_seed(0)
    llama(32, 1)
    untouched = llama(64, 2)  # the same draw as the teacher of `run`
    for name, value in untouched.state_dict().items():
        torch.testing.assert_close(full.teacher_model.state_dict()[name], value, rtol=0, atol=0, msg=name)


# ---- lineage ----


def test_lineage_knows_the_student_is_an_adapter_and_leaks_no_path(tmp_path, training_args):
    trainer = _trained_lora_student(training_args, tmp_path)
    trainer.save_model(str(tmp_path / "saved"))
    record = Lineage.load(str(tmp_path / "saved"))
    adapter = record.student["adapter"]
    assert adapter["method"] == "LORA" and adapter["config"]["r"] == 2
    assert set(adapter["config"]["target_modules"]) == {"q_proj", "v_proj", "lm_head"}
    assert adapter["trainable_parameters"] == sum(p.numel() for p in trainer.model.parameters() if p.requires_grad)
    base = adapter["base_model"]
    assert (base["name"], base["source"]) == ("base", "local") and len(base["weights_sha256"]) == 64
    assert record.teacher["kind"] == "model" and record.teacher["architecture"] == "LlamaForCausalLM"
    assert record.student["init"]["kind"] == "pretrained" and record.student["init"]["name"] == "base"
    assert record.objective["kd_loss"] == "forward_kl" and "forward_kl" in record.objective["description"]
    assert str(tmp_path) not in (tmp_path / "saved" / LINEAGE_FILE).read_text()


# ---- QLoRA: only where bitsandbytes runs ----

needs_bitsandbytes_gpu = pytest.mark.skipif(
    not torch.cuda.is_available() or importlib.util.find_spec("bitsandbytes") is None,
    reason="QLoRA needs bitsandbytes and a CUDA GPU",
)


@needs_bitsandbytes_gpu
def test_qlora_student_trains_only_its_adapters(tmp_path, training_args):
    from transformers import BitsAndBytesConfig

    llama(64, 2).save_pretrained(tmp_path / "base")
    quantized = AutoModelForCausalLM.from_pretrained(
        tmp_path / "base", quantization_config=BitsAndBytesConfig(load_in_4bit=True), device_map={"": 0}
    )
    trainer = _trainer(
        training_args,
        tmp_path / "out",
        quantized,
        llama(64, 2),
        LoraConfig(r=2, target_modules=["q_proj"]),
        max_steps=1,
    )
    assert all("lora_" in n for n, p in trainer.model.named_parameters() if p.requires_grad)
    trainer.train()
    assert trainer.state.global_step == 1
