"""The timed work of tests/bench/trl_compare.py, one function per (work, side).

Each runs in a fresh subprocess (``trl_compare.py --worker``) and returns its seconds; the
orchestration, ratios and table are in trl_compare.py.
"""

from __future__ import annotations

import argparse
import copy
import itertools
import json
import resource
import statistics
import time
from pathlib import Path

DATA = Path(__file__).resolve().parents[3] / "shared" / "data" / "gsm8k"


def digit_fraction(text: str) -> float:
    """The cheap reward both sides use: the fraction of digits in the completion."""
    return sum(ch.isdigit() for ch in text) / max(len(text), 1)


def learning_rate(a: argparse.Namespace) -> float:
    """The GRPO learning rate of both sides: 1e-6 for full fine-tuning, 1e-4 for adapters."""
    return 1e-4 if a.lora else 1e-6


def peak_rss_gib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20  # Linux: KiB


def prompts_of(path: Path, count: int, tokenizer, template: str = "question_only") -> list[str]:
    from lit_align.data.templates import format_prompt

    rows = [json.loads(line) for line in path.read_text().splitlines()[:count]]
    return [format_prompt(template, r["question"], tokenizer) for r in rows]


def sft_pairs(tokenizer, count: int) -> list[dict]:
    """GSM8K train pairs of 100-300 tokens (prompt + response + EOS)."""
    rows = [json.loads(line) for line in (DATA / "train.jsonl").read_text().splitlines()]
    pairs = []
    for r in rows:
        prompt, response = f"Question: {r['question']}\nAnswer:", " " + r["answer"]
        n = len(tokenizer(prompt + response, add_special_tokens=False)["input_ids"]) + 1
        if 100 <= n <= 300:
            pairs.append({"prompt": prompt, "response": response, "tokens": n})
        if len(pairs) == count:
            return pairs
    raise SystemExit(f"only {len(pairs)} GSM8K pairs of 100-300 tokens, {count} asked")


# ---------------------------------------------------------------------- workers (subprocesses)


def grpo_ours(a: argparse.Namespace) -> dict:
    import lightning as L
    import torch

    from lit_align.data import RolloutDataModule
    from lit_align.engines import EngineConfig, SamplingConfig
    from lit_align.losses import LossConfig
    from lit_align.modules import GRPOModule
    from lit_align.rewards.evaluators import RewardEvaluator

    class DigitFraction(RewardEvaluator):
        component_names, total_weights = ("digits",), (1.0,)

        def score(self, prompts, completions, answers):
            return torch.tensor([[digit_fraction(c)] for c in completions])

    ends: list[float] = []

    class RoundTimes(L.Callback):
        def on_train_epoch_end(self, trainer, module):
            ends.append(time.perf_counter())

    from lit_align.lora import LoRAConfig

    rows = a.prompts * a.group
    module = GRPOModule(
        a.model,
        dtype="float32",
        optimizer=lambda p: torch.optim.AdamW(p, lr=learning_rate(a)),
        loss=LossConfig(kl_coef=a.kl),
        lora=LoRAConfig(rank=a.lora, alpha=2.0 * a.lora) if a.lora else None,
    )
    dm = RolloutDataModule(
        train_source=str(DATA / "test.jsonl"),
        template="question_only",
        group_size=a.group,
        rollout_batch_size=rows,
        train_batch_size=rows,
        micro_batch_size=rows // 4,
        sampling=SamplingConfig(
            temperature=1.0, max_new_tokens=a.new_tokens, min_new_tokens=a.new_tokens, stop=[]
        ),
        evaluator=DigitFraction(),
        engine=EngineConfig(backend="hf", max_batch_size=a.prompts),
        zero_signal_rounds=None,
    )
    trainer = L.Trainer(
        accelerator="cpu", devices=1, logger=False, enable_checkpointing=False,
        enable_progress_bar=False, enable_model_summary=False, num_sanity_val_steps=0,
        limit_val_batches=0, max_epochs=a.rounds + 1, reload_dataloaders_every_n_epochs=1,
        callbacks=[RoundTimes()],
    )  # fmt: skip
    trainer.fit(module, dm)
    return {"seconds": statistics.median(b - e for e, b in itertools.pairwise(ends))}


def grpo_trl(a: argparse.Namespace) -> dict:
    from datasets import Dataset
    from transformers import AutoTokenizer, TrainerCallback
    from trl import GRPOConfig, GRPOTrainer

    tok = AutoTokenizer.from_pretrained(a.model)
    prompts = prompts_of(DATA / "test.jsonl", a.prompts * (a.rounds + 1), tok)
    ends: list[float] = []

    class RoundTimes(TrainerCallback):
        def on_step_end(self, args, state, control, **kw):
            ends.append(time.perf_counter())

    def reward(completions, **kw):
        return [digit_fraction(c) for c in completions]

    config = GRPOConfig(
        output_dir=a.workdir, per_device_train_batch_size=a.prompts * a.group // 4,
        gradient_accumulation_steps=4, num_generations=a.group, max_completion_length=a.new_tokens,
        generation_kwargs={"min_new_tokens": a.new_tokens}, temperature=1.0, top_p=1.0, top_k=0,
        learning_rate=learning_rate(a), loss_type="grpo", beta=a.kl, max_steps=a.rounds + 1, bf16=False,
        gradient_checkpointing=a.trl_checkpointing, logging_steps=1, report_to="none",
        save_strategy="no", disable_tqdm=True, model_init_kwargs={"dtype": "float32"},
    )  # fmt: skip
    peft = None
    if a.lora:  # the same adapters as ours: every linear projection but the LM head
        from peft import LoraConfig

        peft = LoraConfig(
            r=a.lora, lora_alpha=2.0 * a.lora, lora_dropout=0.0, target_modules="all-linear",
            task_type="CAUSAL_LM",
        )  # fmt: skip
    trainer = GRPOTrainer(
        model=a.model, reward_funcs=reward, args=config,
        train_dataset=Dataset.from_dict({"prompt": prompts}), processing_class=tok,
        callbacks=[RoundTimes()], peft_config=peft,
    )  # fmt: skip
    trainer.train()
    return {"seconds": statistics.median(b - e for e, b in itertools.pairwise(ends))}


def sft_ours(a: argparse.Namespace) -> dict:
    import lightning as L
    import torch

    from lit_align.data import SFTDataModule
    from lit_align.modules import SFTModule

    times: list[float] = []

    class EpochTime(L.Callback):
        def on_train_batch_start(self, trainer, module, batch, batch_idx):
            if not times:
                times.append(time.perf_counter())

        def on_train_epoch_end(self, trainer, module):
            times.append(time.perf_counter())

    module = SFTModule(a.model, dtype="float32", optimizer=lambda p: torch.optim.AdamW(p, lr=1e-5))
    dm = SFTDataModule(
        train_source=a.pairs_file, template="question_only", micro_batch_size=16, batch_size=16
    )
    trainer = L.Trainer(
        accelerator="cpu", devices=1, logger=False, enable_checkpointing=False,
        enable_progress_bar=False, enable_model_summary=False, num_sanity_val_steps=0,
        limit_val_batches=0, max_epochs=1, callbacks=[EpochTime()],
    )  # fmt: skip
    trainer.fit(module, dm)
    return {"seconds": times[-1] - times[0]}


def sft_trl(a: argparse.Namespace) -> dict:
    from datasets import Dataset
    from transformers import AutoTokenizer, TrainerCallback
    from trl import SFTConfig, SFTTrainer

    rows = [json.loads(line) for line in Path(a.pairs_file).read_text().splitlines()]
    data = Dataset.from_dict(
        {"prompt": [r["prompt"] for r in rows], "completion": [r["response"] for r in rows]}
    )
    times: list[float] = []

    class EpochTime(TrainerCallback):
        def on_step_begin(self, args, state, control, **kw):
            if not times:
                times.append(time.perf_counter())

        def on_epoch_end(self, args, state, control, **kw):
            times.append(time.perf_counter())

    config = SFTConfig(
        output_dir=a.workdir, per_device_train_batch_size=16, num_train_epochs=1,
        learning_rate=1e-5, bf16=False, gradient_checkpointing=False, max_length=None,
        packing=False, padding_free=False, completion_only_loss=True, logging_steps=10,
        report_to="none", save_strategy="no", disable_tqdm=True,
        model_init_kwargs={"dtype": "float32"},
    )  # fmt: skip
    tok = AutoTokenizer.from_pretrained(a.model)
    trainer = SFTTrainer(
        model=a.model, args=config, train_dataset=data, processing_class=tok,
        callbacks=[EpochTime()],
    )  # fmt: skip
    trainer.train()
    return {"seconds": times[-1] - times[0]}


def gen_pairs(a: argparse.Namespace) -> dict:
    """Both sides in one process, alternating, on copies of the same model."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from lit_align.engines import HFEngine, SamplingConfig

    torch.manual_seed(0)
    tok = AutoTokenizer.from_pretrained(a.model)
    model = AutoModelForCausalLM.from_pretrained(a.model, dtype=torch.float32).eval()
    engine = HFEngine(copy.deepcopy(model), tok, max_batch_size=a.prompts)
    greedy = a.greedy
    template = "gsm8k_chat" if greedy else "question_only"  # greedy: a real model's eval
    prompts = prompts_of(DATA / "test.jsonl", a.prompts, tok, template)
    ids = [tok(p, add_special_tokens=False)["input_ids"] for p in prompts]
    n = 1 if greedy else a.group
    sampling = SamplingConfig(
        n=n, temperature=0.0 if greedy else 1.0, max_new_tokens=a.new_tokens,
        min_new_tokens=0 if greedy else a.new_tokens, stop=[], seed=1,
    )  # fmt: skip
    width = max(map(len, ids))
    pad = tok.pad_token_id if tok.pad_token_id is not None else tok.eos_token_id
    left = torch.tensor([[pad] * (width - len(i)) + i for i in ids])
    mask = torch.tensor([[0] * (width - len(i)) + [1] * len(i) for i in ids])

    def ours():
        out = engine.generate(ids, sampling)
        return sum(len(c.token_ids) for c in out), [c.token_ids for c in out]

    def peer():
        with torch.no_grad():
            out = model.generate(
                input_ids=left, attention_mask=mask, do_sample=not greedy, top_k=None,
                top_p=None, temperature=None if greedy else 1.0, num_return_sequences=n,
                max_new_tokens=a.new_tokens, min_new_tokens=0 if greedy else a.new_tokens,
                pad_token_id=pad,
            )  # fmt: skip
        new = out[:, width:].tolist()
        eos = tok.eos_token_id
        cut = [r[: r.index(eos) + 1] if eos in r else r for r in new]
        return sum(map(len, cut)), cut

    ours(), peer()  # warm-up
    rows = []
    for k in range(a.pairs):
        run = {}
        for side, fn in (("ours", ours), ("peer", peer))[:: 1 if k % 2 == 0 else -1]:
            start = time.perf_counter()
            tokens, texts = fn()
            run[side] = {"seconds": time.perf_counter() - start, "tokens": tokens, "ids": texts}
        same = run["ours"]["ids"] == run["peer"]["ids"] if greedy else None
        rows.append({s: {k2: v for k2, v in run[s].items() if k2 != "ids"} for s in run})
        rows[-1]["same_tokens"] = same
    return {"pairs": rows, "peak_rss_gib": peak_rss_gib()}


WORKERS = {
    ("grpo", "ours"): grpo_ours,
    ("grpo", "trl"): grpo_trl,
    ("sft", "ours"): sft_ours,
    ("sft", "trl"): sft_trl,
}
