"""A rollout engine on Hugging Face ``generate``: CPU demos, tests and small GPU runs.

It holds its own copy of the model (weights pushed in by :meth:`HFEngine.load_weights`), samples
with ``generate`` (n per prompt, temperature/top-p, min/max new tokens, stop strings kept in the
output). The log-probs and entropies of the sampled tokens are those of the raw model
(temperature 1, no top-p), read from the logits of each decoding step: no second pass.
"""

from __future__ import annotations

import copy
import logging
from collections.abc import Callable, Iterable, Sequence
from typing import Any

import torch
from transformers import LogitsProcessorList, StoppingCriteria, StoppingCriteriaList

from lit_align.engines.base import Completion, GenerationInterrupted, SamplingConfig, row_seed
from lit_align.lora import is_lora

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


class _StepSampler:
    """The logits processor that does all of a decoding step's work on the raw logits.

    Per step it (1) keeps each row's raw log-softmax (temperature 1, no top-p) at the token it
    picks, and the entropy of that raw distribution, so the engine never runs a second scoring
    pass; (2) suppresses end-of-sequence before ``min_new_tokens`` (done here, not by
    ``generate``, so the recorded log-probs stay the raw model's); (3) picks the token: greedy, or
    sampled with temperature/top-p where each row draws from its own generator. ``generate`` then
    runs greedy over what this returns (only the picked token stays finite).

    Sampling uses the exponential race ``argmax(p / q)``, q ~ Exp(1): the rows' q are drawn one
    generator at a time into one buffer, and the argmax is batched. It is what
    ``torch.multinomial(p, 1, generator=g)`` computes, draw for draw (a test pins this), so a
    row's samples depend on its seed alone, never on the batch it shares: DDP ranks and a single
    process draw the same completions for the same prompt.
    """

    def __init__(
        self,
        seeds: list[int] | None,
        temperature: float,
        top_p: float,
        min_new_tokens: int,
        eos_ids: list[int],
        device: torch.device,
    ) -> None:
        self.generators = (
            [torch.Generator(device=device).manual_seed(s) for s in seeds] if seeds else None
        )
        self.temperature, self.top_p = temperature, top_p
        self.min_new_tokens, self.eos_ids = min_new_tokens, eos_ids
        self.log_probs: list[torch.Tensor] = []  # per step: (rows,)
        self.entropy: list[torch.Tensor] = []  # per step: (rows,)
        self._race: torch.Tensor | None = None  # (rows, V) exponential draws, reused per step

    def __call__(self, input_ids: torch.Tensor, scores: torch.Tensor) -> torch.Tensor:
        scores = scores.float()  # (rows, V) raw logits of this step
        lse = torch.logsumexp(scores, dim=-1, keepdim=True)  # (rows, 1)
        p = (scores - lse).exp_()
        # H = lse - Σ p·z; where z = -inf, p = 0 and the term is 0 (nan_to_num), as it should be
        self.entropy.append(lse.squeeze(-1) - (p * scores).nan_to_num_(0.0).sum(-1))
        masked = scores
        if len(self.log_probs) < self.min_new_tokens and self.eos_ids:
            masked = scores.clone()
            masked[:, self.eos_ids] = float("-inf")
        if self.generators is None:
            picks = masked.argmax(-1)  # (rows,)
        else:
            picks = self._sample(masked, p if masked is scores else None)
        self.log_probs.append((scores.gather(-1, picks[:, None]) - lse).squeeze(-1))
        if self.generators is None:
            return masked  # generate's own argmax makes the same pick
        return torch.full_like(scores, float("-inf")).scatter_(-1, picks[:, None], 0.0)

    def _sample(self, logits: torch.Tensor, raw_p: torch.Tensor | None) -> torch.Tensor:
        if self.temperature == 1.0 and raw_p is not None:
            probs = raw_p
        else:
            probs = torch.softmax(logits / self.temperature, dim=-1)  # (rows, V)
        if self.top_p < 1.0:
            sorted_p, order = probs.sort(dim=-1, descending=True)
            outside = sorted_p.cumsum(-1) - sorted_p > self.top_p  # keep the smallest nucleus
            probs = torch.zeros_like(probs).scatter(-1, order, sorted_p.masked_fill(outside, 0.0))
        assert self.generators is not None
        if self._race is None or self._race.shape != probs.shape:
            self._race = torch.empty_like(probs)
        for row, g in zip(self._race, self.generators, strict=True):
            row.exponential_(generator=g)
        return (probs / self._race).argmax(-1)

    def stats(self) -> tuple[list[list[float]], list[list[float]]]:
        """Recorded log-probs and entropies, one list per row: (rows, steps) each."""
        if not self.log_probs:
            return [], []
        lp = torch.stack(self.log_probs, dim=1)  # (rows, steps)
        return lp.tolist(), torch.stack(self.entropy, dim=1).tolist()


class HFEngine:
    """Batched sampling with a private copy of a Hugging Face causal LM.

    Args:
        model: the engine's own model (use :meth:`from_policy` to copy a policy).
        tokenizer: its tokenizer (pad and eos ids are taken from it).
        max_batch_size: prompts per ``generate`` call (each expands to ``n`` sequences).
        progress: show a progress bar over the ``generate`` calls.
        share_prefill: with ``n`` > 1, run each prompt through the model once and give its KV
            cache to its n rows (same samples, float-level differences aside); False: let
            ``generate`` prefill every row.
    """

    def __init__(
        self,
        model: Any,
        tokenizer: Any,
        max_batch_size: int = 64,
        progress: bool = False,
        share_prefill: bool = True,
    ) -> None:
        if max_batch_size < 1:
            raise ValueError(f"max_batch_size must be >= 1, got {max_batch_size}")
        self.model = model.eval()
        for p in self.model.parameters():
            p.requires_grad_(False)
        self.tokenizer = tokenizer
        self.max_batch_size = max_batch_size
        self.progress = progress
        self.share_prefill = share_prefill
        self._weight_version: int | None = None
        # Asked between decoding steps; True stops generation (GenerationInterrupted), e.g. on
        # SIGTERM, so a preempted run does not finish a long round first.
        self.interrupt: Callable[[], bool] | None = None

    @classmethod
    def from_policy(
        cls,
        policy: Any,
        tokenizer: Any,
        max_batch_size: int = 64,
        progress: bool = False,
        share_prefill: bool = True,
    ) -> HFEngine:
        """An engine holding an unsharded copy of ``policy`` (same device and dtype).

        A plain policy is deep-copied. A sharded one (FSDP2 DTensor parameters) is rebuilt from
        its config; its weights then arrive through :meth:`load_weights` (the DataModule syncs a
        new engine at once).
        """
        sharded = any(type(p).__name__ == "DTensor" for p in policy.parameters())
        if not sharded:
            return cls(copy.deepcopy(policy), tokenizer, max_batch_size, progress, share_prefill)
        from transformers import AutoModelForCausalLM

        local = next(p for p in policy.parameters()).to_local()
        model = AutoModelForCausalLM.from_config(policy.config, dtype=local.dtype)
        model.generation_config = copy.deepcopy(policy.generation_config)
        return cls(model.to(local.device), tokenizer, max_batch_size, progress, share_prefill)

    # ------------------------------------------------------------------ weights

    @property
    def weight_version(self) -> int | None:
        """The policy step whose weights the engine holds (None until the first load)."""
        return self._weight_version

    @property
    def adapter_sync(self) -> str:
        """What a LoRA policy sends (see :func:`~lit_align.engines.weights.sync_weights`): the
        adapter tensors into this engine's own peft copy, or merged weights into a plain one."""
        return "trainable" if is_lora(self.model) else "merged"

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
        """Trim one generated row at end-of-sequence or its first stop string.

        ``generate`` pads a row only after it finished (EOS or stop string), so a row that hit
        neither ran the full budget and every token of it was sampled, pad ids included.
        """
        eos = self._eos_ids
        for i, tok in enumerate(tokens):
            if tok in eos:
                tokens = tokens[: i + 1]
                return tokens, self.tokenizer.decode(tokens, skip_special_tokens=True), "stop"
        decode = self.tokenizer.decode
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
    def generate(
        self,
        prompt_token_ids: Sequence[Sequence[int]],
        sampling: SamplingConfig,
        seeds: Sequence[int] | None = None,
    ) -> list[Completion]:
        """``sampling.n`` completions per prompt, prompt-major; ``seeds``: one per prompt, in
        place of ``sampling.seed``."""
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
            row_seeds = None
            if sampling.temperature > 0:
                bases = seeds[start : start + len(batch)] if seeds else [sampling.seed] * len(batch)
                row_seeds = [
                    row_seed(base, p, j)
                    for base, p in zip(bases, batch, strict=True)
                    for j in range(sampling.n)
                ]
            eos = sorted(self._eos_ids)
            sampler = _StepSampler(
                row_seeds,
                sampling.temperature,
                sampling.top_p,
                sampling.min_new_tokens,
                eos,
                device,
            )
            kwargs: dict[str, Any] = {
                "max_new_tokens": sampling.max_new_tokens,
                "pad_token_id": pad,
                "eos_token_id": eos or None,
                "do_sample": False,  # the sampler picks every token; generate keeps its pick
                "logits_processor": LogitsProcessorList([sampler]),
            }
            if sampling.stop:
                kwargs.update(stop_strings=sampling.stop, tokenizer=self.tokenizer)
            if self.interrupt is not None:
                kwargs["stopping_criteria"] = StoppingCriteriaList([_Interrupt(self.interrupt)])
            ids, mask = ids.to(device), mask.to(device)
            if self.share_prefill and sampling.n > 1 and width > 1:
                kwargs.update(self._shared_prefill(ids, mask, sampling.n))
            out = self.model.generate(input_ids=ids, attention_mask=mask, **kwargs)
            if self.interrupt is not None and self.interrupt():
                raise GenerationInterrupted("generation interrupted (the engine's interrupt)")
            generated = out[:, width:].tolist()  # (len(batch) * n, steps)
            log_probs, entropy = sampler.stats()  # (len(batch) * n, steps) each
            for k, g in enumerate(generated):
                toks, text, reason = self._cut(g, sampling)
                lp, ent = (log_probs[k][: len(toks)], entropy[k][: len(toks)]) if toks else ([], [])
                results.append(Completion(start + k // sampling.n, toks, text, lp, ent, reason))  # type: ignore[arg-type]
        return results

    def _shared_prefill(self, ids: torch.Tensor, mask: torch.Tensor, n: int) -> dict[str, Any]:
        """The KV cache of every prompt but its last token, computed once per prompt and
        repeated for its ``n`` rows (``generate`` would run the prompt through the model n
        times). ``generate`` continues from it with the last prompt token. Returns the
        ``generate`` keyword that passes it.

        ids, mask: (prompts × n, width), prompt-major, left-padded.
        """
        first = slice(0, ids.shape[0], n)  # one row per prompt
        prefix, prefix_mask = ids[first, :-1], mask[first, :-1]
        # the positions generate gives left-padded rows: count real tokens from the first one
        positions = (prefix_mask.cumsum(-1) - 1).masked_fill(prefix_mask == 0, 1)
        out = self.model(
            input_ids=prefix, attention_mask=prefix_mask, position_ids=positions, use_cache=True
        )
        # transformers >= 5.2x names it `cache`; earlier releases `past_key_values`
        cache = getattr(out, "cache", None)
        name = "cache" if cache is not None else "past_key_values"
        cache = cache if cache is not None else out.past_key_values
        cache.batch_repeat_interleave(n)
        return {name: cache}


class _Interrupt(StoppingCriteria):
    """Stops every row at once when ``requested()`` turns true."""

    def __init__(self, requested: Callable[[], bool]) -> None:
        self.requested = requested

    def __call__(
        self, input_ids: torch.Tensor, scores: torch.Tensor, **kwargs: Any
    ) -> torch.Tensor:
        stop = bool(self.requested())
        return torch.full((input_ids.shape[0],), stop, dtype=torch.bool, device=input_ids.device)
