"""A rollout engine on Hugging Face ``generate``: CPU demos, tests and small GPU runs.

It holds its own copy of the model (weights pushed in by :meth:`HFEngine.load_weights`), samples
with ``generate`` (n per prompt, temperature/top-p, min/max new tokens, stop strings kept in the
output), then scores the sampled tokens with one teacher-forced pass through
:func:`lit_align.ops.get_response_log_probs`, so its log-probs and entropies are those of the raw
model (temperature 1), computed exactly as the trainer computes them.
"""

from __future__ import annotations

import copy
import logging
from collections.abc import Callable, Iterable, Sequence
from typing import Any

import torch
from transformers import LogitsProcessorList, StoppingCriteria, StoppingCriteriaList

from lit_align.ops import get_response_log_probs
from lit_align.rollout.base import Completion, GenerationInterrupted, SamplingConfig, row_seed

log = logging.getLogger(__name__)

__all__ = ["HFEngine", "strip_wrapper_prefixes"]

_WRAPPER_PREFIXES = (
    "_forward_module.",
    "module.",
    "_orig_mod.",
    "_fsdp_wrapped_module.",
    "_checkpoint_wrapped_module.",
)


def strip_wrapper_prefixes(name: str) -> str:
    """HF parameter name from a name under DDP/FSDP/compile/checkpoint wrappers."""
    for prefix in _WRAPPER_PREFIXES:
        name = name.replace(prefix, "")
    return name


class _RowSampler:
    """A logits processor that samples each row with its own generator (temperature, top-p).

    ``generate`` runs greedy over what this returns (only the sampled token stays finite), so a
    row's samples depend on its seed alone, never on the batch it shares: DDP ranks and a single
    process draw the same completions for the same prompt.
    """

    def __init__(
        self, seeds: list[int], temperature: float, top_p: float, device: torch.device
    ) -> None:
        self.generators = [torch.Generator(device=device).manual_seed(s) for s in seeds]
        self.temperature, self.top_p = temperature, top_p

    def __call__(self, input_ids: torch.Tensor, scores: torch.Tensor) -> torch.Tensor:
        probs = torch.softmax(scores.float() / self.temperature, dim=-1)  # (rows, V)
        if self.top_p < 1.0:
            sorted_p, order = probs.sort(dim=-1, descending=True)
            outside = sorted_p.cumsum(-1) - sorted_p > self.top_p  # keep the smallest nucleus
            probs = torch.zeros_like(probs).scatter(-1, order, sorted_p.masked_fill(outside, 0.0))
        picks = torch.stack(
            [torch.multinomial(probs[i], 1, generator=g) for i, g in enumerate(self.generators)]
        )  # (rows, 1)
        return torch.full_like(scores, float("-inf")).scatter(-1, picks, 0.0)


class HFEngine:
    """Batched sampling with a private copy of a Hugging Face causal LM.

    Args:
        model: the engine's own model (use :meth:`from_policy` to copy a policy).
        tokenizer: its tokenizer (pad and eos ids are taken from it).
        max_batch_size: prompts per ``generate`` call (each expands to ``n`` sequences).
        progress: show a progress bar over the ``generate`` calls.
    """

    def __init__(
        self, model: Any, tokenizer: Any, max_batch_size: int = 64, progress: bool = False
    ) -> None:
        if max_batch_size < 1:
            raise ValueError(f"max_batch_size must be >= 1, got {max_batch_size}")
        self.model = model.eval()
        for p in self.model.parameters():
            p.requires_grad_(False)
        self.tokenizer = tokenizer
        self.max_batch_size = max_batch_size
        self.progress = progress
        self._weight_version: int | None = None
        # Asked between decoding steps; True stops generation (GenerationInterrupted), e.g. on
        # SIGTERM, so a preempted run does not finish a long round first.
        self.interrupt: Callable[[], bool] | None = None

    @classmethod
    def from_policy(
        cls, policy: Any, tokenizer: Any, max_batch_size: int = 64, progress: bool = False
    ) -> HFEngine:
        """An engine holding an unsharded copy of ``policy`` (same device and dtype).

        A plain policy is deep-copied. A sharded one (FSDP2 DTensor parameters) is rebuilt from
        its config; its weights then arrive through :meth:`load_weights` (the DataModule syncs a
        new engine at once).
        """
        sharded = any(type(p).__name__ == "DTensor" for p in policy.parameters())
        if not sharded:
            return cls(copy.deepcopy(policy), tokenizer, max_batch_size, progress)
        from transformers import AutoModelForCausalLM

        local = next(p for p in policy.parameters()).to_local()
        model = AutoModelForCausalLM.from_config(policy.config, dtype=local.dtype)
        model.generation_config = copy.deepcopy(policy.generation_config)
        return cls(model.to(local.device), tokenizer, max_batch_size, progress)

    # ------------------------------------------------------------------ weights

    @property
    def weight_version(self) -> int | None:
        """The policy step whose weights the engine holds (None until the first load)."""
        return self._weight_version

    @torch.no_grad()
    def load_weights(self, named_tensors: Iterable[tuple[str, torch.Tensor]], version: int) -> None:
        # state_dict keeps every name, tied ones too (lm_head.weight when tied to the embeddings).
        params = self.model.state_dict(keep_vars=True)
        unknown = []
        for name, tensor in named_tensors:
            target = params.get(strip_wrapper_prefixes(name))
            if target is None:
                unknown.append(name)
                continue
            target.copy_(tensor.detach().to(device=target.device, dtype=target.dtype))
        if unknown:
            raise KeyError(
                f"load_weights: {len(unknown)} names not in the engine's model, e.g. {unknown[:3]}"
            )
        self._weight_version = version

    def sleep(self) -> None:
        """Nothing to free: the HF engine shares the process's memory."""

    def wake_up(self) -> None:
        """Nothing to restore."""

    # ------------------------------------------------------------------ generation

    @property
    def _eos_ids(self) -> set[int]:
        ids = self.model.generation_config.eos_token_id
        ids = set(ids if isinstance(ids, list) else [ids] if ids is not None else [])
        if self.tokenizer.eos_token_id is not None:
            ids.add(self.tokenizer.eos_token_id)
        return ids

    def _cut(self, tokens: list[int], sampling: SamplingConfig) -> tuple[list[int], str, str]:
        """Trim one generated row at end-of-sequence or its first stop string."""
        eos = self._eos_ids
        for i, tok in enumerate(tokens):
            if tok in eos:
                tokens = tokens[: i + 1]
                return tokens, self.tokenizer.decode(tokens, skip_special_tokens=True), "stop"
        decode = self.tokenizer.decode
        pad = self.tokenizer.pad_token_id
        if pad is not None and pad not in eos:
            while tokens and tokens[-1] == pad:
                tokens = tokens[:-1]
        text = decode(tokens, skip_special_tokens=True)
        hits = [(text.find(s), s) for s in sampling.stop or () if s and s in text]
        if hits:
            at, stop = min(hits)
            end = at + len(stop)
            lo, hi = 1, len(tokens)  # shortest prefix whose text holds that stop string
            while lo < hi:
                mid = (lo + hi) // 2
                if len(decode(tokens[:mid], skip_special_tokens=True)) >= end:
                    hi = mid
                else:
                    lo = mid + 1
            return tokens[:lo], text[:end], "stop"
        reason = "length" if len(tokens) >= sampling.max_new_tokens else "stop"
        return tokens, text, reason

    @torch.no_grad()
    def _score(
        self, prompts: list[list[int]], completions: list[list[int]]
    ) -> list[tuple[list[float], list[float]]]:
        """Raw log-probs and entropies of each completion's tokens, one right-padded pass."""
        device = next(self.model.parameters()).device
        pad = self.tokenizer.pad_token_id or 0
        rows = [p + c for p, c in zip(prompts, completions, strict=True)]
        width = max(len(r) for r in rows)
        full = torch.full((len(rows), width), pad, dtype=torch.long)
        for i, r in enumerate(rows):
            full[i, : len(r)] = torch.tensor(r)
        full = full.to(device)
        out = get_response_log_probs(
            self.model, full[:, :-1], full[:, 1:], return_token_entropy=True
        )
        scored = []
        for i, (p, c) in enumerate(zip(prompts, completions, strict=True)):
            span = slice(len(p) - 1, len(p) - 1 + len(c))  # label positions of the completion
            scored.append(
                (out["log_probs"][i, span].tolist(), out["token_entropy"][i, span].tolist())
            )
        return scored

    @torch.no_grad()
    def generate(
        self, prompt_token_ids: Sequence[Sequence[int]], sampling: SamplingConfig
    ) -> list[Completion]:
        """``sampling.n`` completions per prompt, prompt-major."""
        if any(len(p) == 0 for p in prompt_token_ids):
            raise ValueError("every prompt needs at least one token")
        device = next(self.model.parameters()).device
        pad = self.tokenizer.pad_token_id if self.tokenizer.pad_token_id is not None else 0
        results: list[Completion] = []
        starts: Iterable[int] = range(0, len(prompt_token_ids), self.max_batch_size)
        if self.progress:
            from tqdm.auto import tqdm

            starts = tqdm(starts, desc="generate", unit="batch")
        for start in starts:
            batch = [list(p) for p in prompt_token_ids[start : start + self.max_batch_size]]
            width = max(len(p) for p in batch)
            rows = [p for p in batch for _ in range(sampling.n)]  # prompt-major, n rows each
            ids = torch.full((len(rows), width), pad, dtype=torch.long)
            mask = torch.zeros((len(rows), width), dtype=torch.long)
            for i, p in enumerate(rows):  # left padding: generation continues every row
                ids[i, width - len(p) :] = torch.tensor(p)
                mask[i, width - len(p) :] = 1
            kwargs: dict[str, Any] = {
                "max_new_tokens": sampling.max_new_tokens,
                "min_new_tokens": sampling.min_new_tokens,
                "pad_token_id": pad,
                "eos_token_id": sorted(self._eos_ids) or None,
                "do_sample": False,  # sampling happens in _RowSampler, row by row
            }
            if sampling.temperature > 0:
                seeds = [row_seed(sampling.seed, p, j) for p in batch for j in range(sampling.n)]
                sampler = _RowSampler(seeds, sampling.temperature, sampling.top_p, device)
                kwargs["logits_processor"] = LogitsProcessorList([sampler])
            if sampling.stop:
                kwargs.update(stop_strings=sampling.stop, tokenizer=self.tokenizer)
            if self.interrupt is not None:
                kwargs["stopping_criteria"] = StoppingCriteriaList([_Interrupt(self.interrupt)])
            out = self.model.generate(
                input_ids=ids.to(device), attention_mask=mask.to(device), **kwargs
            )
            if self.interrupt is not None and self.interrupt():
                raise GenerationInterrupted("generation interrupted (the engine's interrupt)")
            generated = out[:, width:].tolist()  # (len(batch) * n, steps)
            cut = [self._cut(g, sampling) for g in generated]
            prompts = [batch[k // sampling.n] for k in range(len(generated))]
            nonempty = [k for k, (toks, _, _) in enumerate(cut) if toks]
            scores = dict(
                zip(
                    nonempty,
                    self._score([prompts[k] for k in nonempty], [cut[k][0] for k in nonempty]),
                    strict=True,
                )
            )
            for k, (toks, text, reason) in enumerate(cut):
                lp, ent = scores.get(k, ([], []))
                results.append(Completion(start + k // sampling.n, toks, text, lp, ent, reason))  # type: ignore[arg-type]
        return results


class _Interrupt(StoppingCriteria):
    """Stops every row at once when ``requested()`` turns true."""

    def __init__(self, requested: Callable[[], bool]) -> None:
        self.requested = requested

    def __call__(
        self, input_ids: torch.Tensor, scores: torch.Tensor, **kwargs: Any
    ) -> torch.Tensor:
        stop = bool(self.requested())
        return torch.full((input_ids.shape[0],), stop, dtype=torch.bool, device=input_ids.device)
