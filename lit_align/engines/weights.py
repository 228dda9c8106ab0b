"""Weights from the policy to an engine: full tensors one at a time, the sync, and a check."""

from __future__ import annotations

import time
from collections.abc import Iterator, Sequence

import torch

from lit_align.engines.base import Completion, RolloutEngine
from lit_align.lora import adapter_items, adapter_state, is_lora, merged_items

__all__ = ["full_state_items", "max_logprob_gap", "sync_weights"]


def full_state_items(model: torch.nn.Module) -> Iterator[tuple[str, torch.Tensor]]:
    """(name, full tensor) of the model's state dict, one tensor at a time.

    Tied weights appear under every name (``lm_head.weight`` too). A plain or DDP model yields
    its own tensors (no copy). FSDP2 (DTensor) tensors are all-gathered one by one as the
    consumer asks for them, so the full model never exists twice. FSDP1 flat parameters go
    through ``get_model_state_dict``, which gathers the whole state dict first. Every rank must
    consume the iterator to the end (each gather is a collective).
    """
    params = list(model.parameters())
    if any(type(p).__name__ == "FlatParameter" for p in params):
        from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict

        state = get_model_state_dict(model, options=StateDictOptions(full_state_dict=True))
        yield from state.items()
        return
    for name, tensor in model.state_dict().items():
        if hasattr(tensor, "full_tensor"):  # DTensor: gather this one tensor across ranks
            tensor = tensor.full_tensor()
        yield name, tensor.detach()


def sync_weights(engine: RolloutEngine, model: torch.nn.Module, step: int) -> float:
    """Push ``model``'s weights into ``engine`` as the weights of optimizer step ``step``.

    A full model streams every tensor. A LoRA model (peft) sends what the engine declares it
    takes (its ``adapter_sync``): ``adapter`` (the adapter alone, which the engine serves on its
    base weights: vLLM with LoRA on), ``trainable`` (the adapter tensors into the engine's own
    copy of the same peft model: the HF engine) or ``merged`` (base weights plus each delta, a
    full reload; any engine). The engine records ``step`` as its
    :attr:`~RolloutEngine.weight_version`. Returns the seconds the sync took.
    """
    start = time.perf_counter()
    if not is_lora(model):
        engine.load_weights(full_state_items(model), version=step)
        return time.perf_counter() - start
    mode = getattr(engine, "adapter_sync", "merged")
    if mode == "adapter":
        config = model.peft_config[model.active_adapter]
        engine.load_adapter(adapter_state(model), config, version=step)  # type: ignore[attr-defined]
    elif mode == "trainable":
        engine.load_weights(adapter_items(model), version=step)
    else:
        engine.load_weights(merged_items(model), version=step)
    return time.perf_counter() - start


@torch.no_grad()
def max_logprob_gap(
    model: torch.nn.Module,
    prompt_token_ids: Sequence[Sequence[int]],
    completions: Sequence[Completion],
) -> float:
    """Largest |engine log-prob − ``model``'s teacher-forced log-prob| over every sampled token.

    A check that an engine holds ``model``'s weights: ~1e-6 in float32 when it does.
    """
    from lit_align.ops import get_response_log_probs

    device = next(model.parameters()).device
    worst = 0.0
    for c in completions:
        prompt = list(prompt_token_ids[c.prompt_index])
        ids = torch.tensor([prompt + list(c.token_ids)], device=device)
        log_probs = get_response_log_probs(model, ids[:, :-1], ids[:, 1:])["log_probs"][0]
        ours = log_probs[len(prompt) - 1 : len(prompt) - 1 + len(c.token_ids)].float().cpu()
        worst = max(worst, (ours - torch.tensor(c.log_probs)).abs().max().item())
    return worst
