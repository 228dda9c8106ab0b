"""lit_align beside TRL on the same work: a GRPO round, an SFT epoch, generation.

Run in a venv with the bench extra (``pip install -e ".[bench,dev]"``, TRL is never a runtime
dependency); one command times all three, each side in a fresh subprocess per measurement, the
two sides alternating (ours first in even pairs, TRL first in odd ones), and prints the median of
the per-pair ratios, the raw times, peak memory and the load average:

    python tests/bench/trl_compare.py                      # random-init tiny Qwen2 (~3 M parameters)
    python tests/bench/trl_compare.py --model DIR          # e.g. SmolLM2-135M-Instruct (smaller work)
    python tests/bench/trl_compare.py --only gen --pairs 5 --json out.json
    python tests/bench/trl_compare.py --model DIR --only grpo --lora 16 --kl 0.04   # TRL + peft

The work (defaults for the tiny model; a DIR gets smaller sizes, see --help):
- **grpo**: P prompts (GSM8K test questions) × G samples × exactly N new tokens (EOS suppressed on
  both sides: ``min_new_tokens``), a cheap reward (digit fraction), one AdamW step of grpo_clip in
  4 micro-batches, no reference model (``--kl 0.04`` loads one on each side: kl_coef / beta), no
  gradient checkpointing (TRL: ``--trl_checkpointing`` adds its default). ``--lora R``: both
  sides train rank-R adapters (alpha 2R, every linear projection but the LM head, peft) at
  lr 1e-4; the reference is the base with the adapters off on both sides. Time per round, measured over rounds 2..R+1 (round 1 warms up).
- **sft**: GSM8K train question/answer pairs of 100–300 tokens, batch 16, response-only loss, one
  epoch; total non-pad tokens ÷ wall time of the epoch (first step included on both sides).
- **gen**: ``HFEngine.generate`` vs ``model.generate`` on the same model copy, same prompts, same
  sampling (temperature 1, top-k off, P × G rows of exactly N tokens; ``--model`` DIR: greedy,
  32 GSM8K chat prompts × up to 128 tokens, both must produce the same tokens). Interleaved in
  one process.

Peak memory is the worker process's peak RSS (the interpreter and libraries included, ~0.4 GiB).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

from trl_workers import WORKERS, gen_pairs, peak_rss_gib, sft_pairs

HERE = Path(__file__).resolve()


def worker(a: argparse.Namespace) -> None:
    import logging
    import warnings

    warnings.filterwarnings("ignore")
    logging.disable(logging.WARNING)
    if a.work == "gen":
        result = gen_pairs(a)
    else:
        result = WORKERS[(a.work, a.side)](a)
        result["peak_rss_gib"] = peak_rss_gib()
    Path(a.result).write_text(json.dumps(result))


# ---------------------------------------------------------------------- orchestration


def spawn(a: argparse.Namespace, work: str, side: str, workdir: str) -> dict:
    result = Path(workdir) / f"{work}_{side}.json"
    cmd = [sys.executable, str(HERE), "--worker", "--work", work, "--side", side]
    cmd += ["--model", a.model, "--result", str(result), "--workdir", workdir]
    cmd += ["--pairs_file", a.pairs_file, "--pairs", str(a.pairs)]
    cmd += ["--prompts", str(a.prompts), "--group", str(a.group)]
    cmd += ["--new_tokens", str(a.new_tokens), "--rounds", str(a.rounds)]
    cmd += ["--trl_checkpointing"] * a.trl_checkpointing + ["--greedy"] * a.greedy
    cmd += ["--kl", str(a.kl), "--lora", str(a.lora)]
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}
    subprocess.run(cmd, check=True, env=env, stdout=subprocess.DEVNULL if not a.verbose else None)
    return json.loads(result.read_text())


def pairwise(a: argparse.Namespace, work: str, workdir: str) -> list[dict]:
    pairs = []
    for k in range(a.pairs):
        order = ("ours", "trl") if k % 2 == 0 else ("trl", "ours")
        pairs.append({side: spawn(a, work, side, workdir) for side in order})
        print(f"  {work} pair {k}: {json.dumps(pairs[-1])}", flush=True)
    return pairs


def summarize(work: str, pairs: list[dict], a: argparse.Namespace) -> dict:
    """Median of per-pair ratios: > 1 means lit_align is slower (time) or faster (tokens/s)."""
    if work == "gen":
        ours = [p["ours"]["seconds"] for p in pairs]
        peer = [p["peer"]["seconds"] for p in pairs]
        tokens = pairs[0]["ours"]["tokens"]
        return {
            "ours_s": statistics.median(ours), "peer_s": statistics.median(peer),
            "time_ratio": statistics.median(o / p for o, p in zip(ours, peer, strict=True)),
            "ours_tok_s": tokens / statistics.median(ours),
            "peer_tok_s": pairs[0]["peer"]["tokens"] / statistics.median(peer),
            # greedy only: sampled rows come from different generators on the two sides
            "same_tokens": None if pairs[0].get("same_tokens") is None
            else all(p["same_tokens"] for p in pairs),
        }  # fmt: skip
    ours = [p["ours"]["seconds"] for p in pairs]
    trl = [p["trl"]["seconds"] for p in pairs]
    out = {
        "ours_s": statistics.median(ours), "trl_s": statistics.median(trl),
        "time_ratio": statistics.median(o / t for o, t in zip(ours, trl, strict=True)),
        "ours_peak_gib": max(p["ours"]["peak_rss_gib"] for p in pairs),
        "trl_peak_gib": max(p["trl"]["peak_rss_gib"] for p in pairs),
    }  # fmt: skip
    if work == "sft":
        out["ours_tok_s"] = a.sft_tokens / out["ours_s"]
        out["trl_tok_s"] = a.sft_tokens / out["trl_s"]
        out["tok_s_ratio"] = statistics.median(t / o for o, t in zip(ours, trl, strict=True))
    return out


def tiny_model(path: Path) -> None:
    from lit_align.models import build_tiny_model, build_tiny_tokenizer

    model, tok = build_tiny_model(
        tokenizer=build_tiny_tokenizer(vocab_size=2048), hidden_size=256, num_layers=4,
        num_heads=4, num_kv_heads=2, intermediate_size=704,
    )  # fmt: skip
    model.save_pretrained(path)
    tok.save_pretrained(path)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument(
        "--model", default="tiny", help="'tiny' (random init, built here) or a HF folder"
    )
    p.add_argument(
        "--only", nargs="+", choices=["grpo", "sft", "gen"], default=["grpo", "sft", "gen"]
    )
    p.add_argument("--pairs", type=int, default=3, help="measurements per side (interleaved)")
    p.add_argument("--prompts", type=int, default=None, help="GRPO/gen prompts (tiny 32, DIR 4)")
    p.add_argument("--group", type=int, default=8, help="samples per prompt")
    p.add_argument("--new_tokens", type=int, default=64, help="new tokens per sample")
    p.add_argument("--rounds", type=int, default=None, help="GRPO rounds timed (tiny 3, DIR 1)")
    p.add_argument("--sft_examples", type=int, default=None, help="SFT pairs (tiny 512, DIR 32)")
    p.add_argument("--trl_checkpointing", action="store_true", help="TRL's default: on")
    p.add_argument("--kl", type=float, default=0.0, help="GRPO KL coefficient (> 0: a reference)")
    p.add_argument("--lora", type=int, default=0, help="GRPO: LoRA rank on both sides (0: full)")
    p.add_argument("--json", default=None, help="write the results here")
    p.add_argument("--verbose", action="store_true")
    # worker-only
    for name in ("--work", "--side", "--result", "--workdir", "--pairs_file"):
        p.add_argument(name, default="", help=argparse.SUPPRESS)
    p.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--greedy", action="store_true", help=argparse.SUPPRESS)
    a = p.parse_args()
    if a.worker:
        return worker(a)
    real = a.model != "tiny"
    a.prompts = a.prompts or (4 if real else 32)
    a.rounds = a.rounds or (1 if real else 3)
    a.sft_examples = a.sft_examples or (32 if real else 512)
    with tempfile.TemporaryDirectory(prefix="trl_compare_") as workdir:
        run(a, workdir)


def run(a: argparse.Namespace, workdir: str) -> None:
    from transformers import AutoTokenizer

    real = a.model != "tiny"
    if not real:
        a.model = str(Path(workdir) / "tiny_qwen2")
        tiny_model(Path(a.model))
    tok = AutoTokenizer.from_pretrained(a.model)
    pairs = sft_pairs(tok, a.sft_examples)
    a.sft_tokens = sum(r["tokens"] for r in pairs)
    a.pairs_file = str(Path(workdir) / "sft_pairs.jsonl")
    Path(a.pairs_file).write_text("".join(json.dumps(r) + "\n" for r in pairs))
    import torch
    from transformers import AutoConfig

    config = AutoConfig.from_pretrained(a.model)
    with torch.device("meta"):
        from transformers import AutoModelForCausalLM

        params = sum(t.numel() for t in AutoModelForCausalLM.from_config(config).parameters())
    print(f"model {a.model}: {params / 1e6:.1f} M parameters, vocab {config.vocab_size}; "
          f"load {os.getloadavg()[0]:.2f}", flush=True)  # fmt: skip
    results: dict = {"model": a.model, "parameters": params, "load_before": os.getloadavg()}
    results["lora"], results["kl"] = a.lora, a.kl
    for work in a.only:
        if work == "gen":
            a.greedy = real
            if real:  # a realistic eval: 32 chat prompts, 128 greedy tokens
                a.prompts, a.new_tokens = 32, 128
            raw = spawn(a, "gen", "both", workdir)["pairs"]
            results["gen"] = summarize("gen", raw, a)
            results["gen_raw"] = raw
        else:
            raw = pairwise(a, work, workdir)
            results[work] = summarize(work, raw, a)
            results[f"{work}_raw"] = raw
        print(f"{work}: {json.dumps(results[work])}", flush=True)
    results["load_after"] = os.getloadavg()
    print(table(results))
    before, after = (
        " / ".join(f"{x:.2f}" for x in results[k]) for k in ("load_before", "load_after")
    )
    print(f"load average (1 / 5 / 15 min): {before} before, {after} after")
    if a.json:
        Path(a.json).write_text(json.dumps(results, indent=1))


def table(r: dict) -> str:
    lines = ["| work | lit_align | peer | ratio | peak RSS ours / TRL |", "|---|---|---|---|---|"]
    if "grpo" in r:
        g = r["grpo"]
        what = "GRPO round" + (f", LoRA r{r['lora']} (TRL + peft)" if r["lora"] else "")
        what += f", KL {r['kl']}" if r["kl"] else ""
        lines.append(
            f"| {what} | {g['ours_s']:.2f} s | TRL {g['trl_s']:.2f} s | "
            f"{g['time_ratio']:.2f}× TRL's time | {g['ours_peak_gib']:.2f} / {g['trl_peak_gib']:.2f} GiB |"
        )
    if "sft" in r:
        s = r["sft"]
        lines.append(
            f"| SFT epoch | {s['ours_tok_s']:.0f} tok/s | TRL {s['trl_tok_s']:.0f} tok/s | "
            f"{s['tok_s_ratio']:.2f}× TRL's tokens/s | {s['ours_peak_gib']:.2f} / {s['trl_peak_gib']:.2f} GiB |"
        )
    if "gen" in r:
        g = r["gen"]
        lines.append(
            f"| generation | {g['ours_tok_s']:.0f} tok/s | model.generate {g['peer_tok_s']:.0f} tok/s"
            f" | {g['time_ratio']:.2f}× its time | same tokens: {g['same_tokens'] or '(sampled)'} |"
        )
    return "\n".join(lines)


if __name__ == "__main__":
    main()
