"""Pure tensor functions: tokenization for SFT/RL, masked reductions, entropy, per-token log-probs.

Shapes: B = batch, T = sequence length, V = vocabulary, H = hidden size. Masks are 0/1 (bool or float).
Nothing here imports Lightning; everything works on CPU and GPU alike.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor
from torch.utils.checkpoint import checkpoint

__all__ = [
    "CausalLMLogProbs",
    "compute_entropy",
    "get_response_log_probs",
    "guarded_masked_mean",
    "masked_normalize",
    "tokenize_prompt_and_output",
    "tokenize_prompt_and_turns",
]

# A multi-turn output: text segments, each trained on (True: the model's turns) or not (False:
# the environment's messages between them). Each segment is tokenized on its own, as episodes are.
Turns = tuple[tuple[str, bool], ...]


def tokenize_prompt_and_output(
    prompt_strs: list[str], output_strs: list[str], tokenizer: Any
) -> dict[str, Tensor]:
    """Tokenize prompts and outputs separately, concatenate them and right-pad the batch.

    Args:
        prompt_strs: B prompt strings.
        output_strs: B output (response) strings, aligned with ``prompt_strs``.
        tokenizer: A Hugging Face tokenizer with a ``pad_token_id``.

    Returns:
        ``input_ids`` (B, L-1) = full[:, :-1], ``labels`` (B, L-1) = full[:, 1:] and
        ``response_mask`` (B, L-1), 1 exactly where the label is an output token, where L is the
        longest prompt+output length in the batch.

    Raises:
        ValueError: when the two lists differ in length or the tokenizer has no pad token.
    """
    _check_pairs(prompt_strs, output_strs, tokenizer)
    outputs = tokenizer(output_strs, add_special_tokens=False)["input_ids"]
    return _pack(prompt_strs, [(o, [True] * len(o)) for o in outputs], tokenizer)


def _check_pairs(prompt_strs: list[str], outputs: list[Any], tokenizer: Any) -> None:
    if len(prompt_strs) != len(outputs):
        raise ValueError(
            f"prompt_strs and output_strs must have the same length, got {len(prompt_strs)} "
            f"and {len(outputs)}"
        )
    if tokenizer.pad_token_id is None:
        raise ValueError(
            "tokenizer has no pad token: set tokenizer.pad_token (load_model_and_tokenizer does)"
        )


def _pack(
    prompt_strs: list[str], outputs: list[tuple[list[int], list[bool]]], tokenizer: Any
) -> dict[str, Tensor]:
    """Prompt ids + each output's (ids, trained flags), right-padded; shifted by one."""
    prompts = tokenizer(prompt_strs, add_special_tokens=False)["input_ids"]
    width = max((len(p) + len(o) for p, (o, _) in zip(prompts, outputs, strict=True)), default=0)
    full = torch.full((len(prompts), width), tokenizer.pad_token_id, dtype=torch.long)
    # Mask over `full` positions: 1 on trained output tokens.
    out_mask = torch.zeros((len(prompts), width), dtype=torch.bool)
    for i, (p, (o, trained)) in enumerate(zip(prompts, outputs, strict=True)):
        full[i, : len(p) + len(o)] = torch.tensor(p + o, dtype=torch.long)
        out_mask[i, len(p) : len(p) + len(o)] = torch.tensor(trained, dtype=torch.bool)
    return {"input_ids": full[:, :-1], "labels": full[:, 1:], "response_mask": out_mask[:, 1:]}


def tokenize_prompt_and_turns(
    prompt_strs: list[str], outputs: list[str | Turns], tokenizer: Any
) -> dict[str, Tensor]:
    """:func:`tokenize_prompt_and_output` where an output may be multi-turn (:data:`Turns`):
    ``response_mask`` is 1 only on the tokens of its trained segments. A plain string output
    gives exactly what :func:`tokenize_prompt_and_output` gives."""
    if all(isinstance(o, str) for o in outputs):
        return tokenize_prompt_and_output(prompt_strs, list(outputs), tokenizer)  # type: ignore[arg-type]
    _check_pairs(prompt_strs, outputs, tokenizer)
    return _pack(prompt_strs, [turn_ids(o, tokenizer) for o in outputs], tokenizer)


def turn_ids(output: str | Turns, tokenizer: Any) -> tuple[list[int], list[bool]]:
    """(token ids, trained flags) of one output, segment by segment."""
    segments = ((output, True),) if isinstance(output, str) else output
    ids: list[int] = []
    trained: list[bool] = []
    for text, train in segments:
        part = tokenizer(text, add_special_tokens=False)["input_ids"]
        ids += part
        trained += [train] * len(part)
    return ids, trained


def compute_entropy(logits: Tensor) -> Tensor:
    """Entropy of the softmax distribution over the last dimension, numerically stable.

    H = logsumexp(z) - sum(softmax(z) * z), which never takes the log of a zero probability.

    Args:
        logits: (..., V) unnormalized scores.

    Returns:
        (...) entropy in nats, in the dtype of ``logits``.
    """
    lse = torch.logsumexp(logits, dim=-1)
    probs = torch.softmax(logits, dim=-1)
    return lse - (probs * logits).sum(dim=-1)


def guarded_masked_mean(tensor: Tensor, mask: Tensor, dim: int | None = None) -> Tensor:
    """Mean of ``tensor`` over the entries where ``mask`` is 1, guarded: a slice with no masked
    entry gives 0 rather than NaN (the count is clamped to 1), so all-padding rows never poison a
    loss. (:func:`lit_align.compat.masked_mean` keeps the CS336 assignment's 0/0 = NaN instead.)

    Args:
        tensor: any shape.
        mask: 0/1 tensor broadcastable to ``tensor``.
        dim: dimension to reduce; ``None`` reduces over all entries.
    """
    mask = mask.to(tensor.dtype)
    if dim is None:
        return (tensor * mask).sum() / mask.sum().clamp(min=1)
    return (tensor * mask).sum(dim=dim) / mask.sum(dim=dim).clamp(min=1)


def masked_normalize(
    tensor: Tensor, mask: Tensor, normalize_constant: float = 1.0, dim: int | None = None
) -> Tensor:
    """Sum of ``tensor`` over the entries where ``mask`` is 1, divided by ``normalize_constant``.

    Args:
        tensor: any shape.
        mask: 0/1 tensor broadcastable to ``tensor``.
        normalize_constant: divisor (e.g. the maximum generation length, as in Dr. GRPO).
        dim: dimension to sum over; ``None`` sums all entries.
    """
    if normalize_constant == 0:
        raise ValueError("normalize_constant must be non-zero")
    masked = tensor * mask.to(tensor.dtype)
    total = masked.sum() if dim is None else masked.sum(dim=dim)
    return total / normalize_constant


def _split_lm(model: torch.nn.Module) -> tuple[torch.nn.Module, torch.nn.Module]:
    """Return (decoder body producing final hidden states, LM head) of a HF causal LM (a peft
    model: of the causal LM it wraps, adapters included)."""
    if hasattr(model, "get_base_model"):
        model = model.get_base_model()
    head = model.get_output_embeddings() if hasattr(model, "get_output_embeddings") else None
    prefix = getattr(model, "base_model_prefix", "model")
    body = getattr(model, prefix, None)
    if head is None or body is None or body is model:
        raise ValueError(
            f"{type(model).__name__} does not expose a decoder body (`{prefix}`) and an LM head "
            "(`get_output_embeddings()`); pass a Hugging Face *ForCausalLM model"
        )
    return body, head


def _chunk_log_probs(
    head: torch.nn.Module, hidden: Tensor, labels: Tensor, with_entropy: bool
) -> tuple[Tensor, Tensor]:
    """LM head on one chunk, then float32 log-softmax, gather and entropy.

    hidden: (N, H), labels: (N,) → (log_probs (N,), entropy (N,) or empty).
    """
    logits = head(hidden).float()  # (N, V) — the only vocabulary-wide tensor, one chunk at a time
    lse = torch.logsumexp(logits, dim=-1)  # (N,)
    log_probs = logits.gather(-1, labels.unsqueeze(-1)).squeeze(-1) - lse
    if not with_entropy:
        return log_probs, log_probs.new_empty(0)
    probs = torch.softmax(logits, dim=-1)
    entropy = lse - (probs * logits).sum(dim=-1)
    return log_probs, entropy


# Below this many logits (N × V) the LM head runs in one piece without checkpointing: the
# float32 logits then take at most 256 MiB, and recomputing them in backward would only cost time.
_ONE_PIECE_LOGITS = 64 * 2**20


def get_response_log_probs(
    model: torch.nn.Module,
    input_ids: Tensor,
    labels: Tensor,
    return_token_entropy: bool = False,
    attention_mask: Tensor | None = None,
    chunk_tokens: int = 256,
    positions: Tensor | None = None,
) -> dict[str, Tensor]:
    """Per-token log p(labels[t] | input_ids[:t+1]) under a causal LM, and optionally the entropy.

    The LM head is applied to chunks of ``chunk_tokens`` final hidden states, so no float32
    (B, T, V) tensor ever exists (V is ~152k for Qwen). Under autograd each chunk is
    checkpointed: its logits are recomputed in backward instead of being kept. When all the
    logits of the call fit in 256 MiB they are computed in one piece, without checkpointing.

    Args:
        model: a Hugging Face ``*ForCausalLM`` (or anything exposing ``base_model_prefix`` and
            ``get_output_embeddings()``).
        input_ids: (B, T) token ids.
        labels: (B, T) next-token targets (``input_ids`` shifted by one).
        return_token_entropy: also return the entropy of the next-token distribution.
        attention_mask: optional (B, T); right padding needs none (causal attention never looks
            ahead), left padding does.
        chunk_tokens: tokens per LM-head chunk; lower it to save memory.
        positions: optional (B, T) 0/1 mask of the positions to compute (e.g. the response
            mask): the LM head, log-softmax and entropy run on those positions only, and the
            outputs are 0 elsewhere. None: every position.

    Returns:
        ``{"log_probs": (B, T)}`` plus ``"token_entropy": (B, T)`` when asked. Nothing is masked
        (beyond ``positions``).
    """
    if input_ids.shape != labels.shape:
        raise ValueError(
            f"input_ids and labels must have the same shape, got {tuple(input_ids.shape)} and "
            f"{tuple(labels.shape)}"
        )
    if positions is not None and positions.shape != labels.shape:
        raise ValueError(
            f"positions must have the shape of labels {tuple(labels.shape)}, got "
            f"{tuple(positions.shape)}"
        )
    if chunk_tokens < 1:
        raise ValueError(f"chunk_tokens must be >= 1, got {chunk_tokens}")
    body, head = _split_lm(model)
    hidden = body(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state  # (B,T,H)
    B, T, H = hidden.shape
    flat_hidden = hidden.reshape(B * T, H)
    flat_labels = labels.reshape(B * T)
    index = None
    if positions is not None:
        index = positions.reshape(B * T).nonzero().squeeze(-1)  # (N,) positions to compute
        if index.numel() == 0:  # keep the graph connected: one position, masked out downstream
            index = index.new_zeros(1)
        flat_hidden, flat_labels = flat_hidden[index], flat_labels[index]
    n = flat_hidden.shape[0]
    use_ckpt = torch.is_grad_enabled() and flat_hidden.requires_grad
    vocab = getattr(head, "out_features", None) or head.weight.shape[0]
    if n * vocab <= _ONE_PIECE_LOGITS:
        chunk_tokens, use_ckpt = max(n, 1), False
    log_probs, entropies = [], []
    for start in range(0, n, chunk_tokens):
        h = flat_hidden[start : start + chunk_tokens]
        y = flat_labels[start : start + chunk_tokens]
        if use_ckpt:
            lp, ent = checkpoint(
                _chunk_log_probs, head, h, y, return_token_entropy, use_reentrant=False
            )
        else:
            lp, ent = _chunk_log_probs(head, h, y, return_token_entropy)
        log_probs.append(lp)
        entropies.append(ent)
    names = ["log_probs"] + (["token_entropy"] if return_token_entropy else [])
    out = {}
    for name, parts in zip(names, (log_probs, entropies), strict=False):
        values = torch.cat(parts) if parts else hidden.new_zeros(0, dtype=torch.float32)
        if index is not None:  # scatter back into (B*T,), zeros at the positions not computed
            values = values.new_zeros(B * T).index_copy(0, index, values)
        out[name] = values.view(B, T)
    return out


def naive_response_log_probs(
    model: torch.nn.Module, input_ids: Tensor, labels: Tensor, return_token_entropy: bool = False
) -> dict[str, Tensor]:
    """Reference path: full logits → log_softmax → gather (→ entropy). For tests and benchmarks."""
    logits = model(input_ids=input_ids).logits.float()  # (B, T, V)
    log_probs_all = F.log_softmax(logits, dim=-1)
    out = {"log_probs": log_probs_all.gather(-1, labels.unsqueeze(-1)).squeeze(-1)}
    if return_token_entropy:
        out["token_entropy"] = compute_entropy(logits)
    return out


class CausalLMLogProbs(torch.nn.Module):
    """A causal LM whose forward returns per-token log-probs (and entropy) of given labels.

    Training calls this module rather than the LM, so under FSDP2 the whole computation,
    LM-head chunks included, happens inside one root forward, where the root's sharded
    parameters (embeddings, final norm, LM head) are gathered.

    Args:
        model: a Hugging Face ``*ForCausalLM``.
        chunk_tokens: tokens per LM-head chunk (see :func:`get_response_log_probs`).
    """

    def __init__(self, model: torch.nn.Module, chunk_tokens: int = 256) -> None:
        super().__init__()
        self.model = model
        self.chunk_tokens = chunk_tokens

    def forward(
        self,
        input_ids: Tensor,
        labels: Tensor,
        return_token_entropy: bool = False,
        positions: Tensor | None = None,
    ) -> dict[str, Tensor]:
        return get_response_log_probs(
            self.model,
            input_ids,
            labels,
            return_token_entropy,
            chunk_tokens=self.chunk_tokens,
            positions=positions,
        )
