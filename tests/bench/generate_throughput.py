"""``lit_align generate`` throughput against a local vLLM OpenAI server, beside a peer client.

SmolLM2-135M-Instruct served by ``python -m vllm.entrypoints.openai.api_server`` on 127.0.0.1
(CPU flags of tests/vllm_server.py). The same work three ways, one after the other:

1. ``lit_align generate --base_url URL`` (sample, grade, write the JSONL, progress file);
2. the official ``openai`` Python client with the same concurrency (threads), same requests,
   sampling only: the peer for the HTTP side;
3. ``lit_align generate --engine.backend vllm``: the model in-process, no server.

Work: the first 64 questions of a seeded GSM8K train subset, ``gsm8k_chat``, n=4, temperature 1.0,
max_new_tokens 128, concurrency 8. Tokens are counted with the model's tokenizer for all three.

    LIT_ALIGN_SMOLLM2_DIR=DIR python tests/bench/generate_throughput.py [path/to/shared/data]
"""

from __future__ import annotations

import os
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

DATA = Path(__file__).resolve().parents[3] / "shared" / "data"
QUESTIONS, N, MAX_NEW, CONCURRENCY = 64, 4, 128, 8


def _generate(backend: str, model: str, out: Path, **kw) -> tuple[float, list[str]]:
    import lit_align.generate as gen
    from lit_align.commands import run_generate
    from lit_align.engines import EngineConfig, SamplingConfig

    texts: list[str] = []
    grade = gen.grade_completions

    def seen(evaluator, prompts, answers, completions, *args, **kwargs):
        texts.extend(c.text for c in completions)  # every sample, kept or not
        return grade(evaluator, prompts, answers, completions, *args, **kwargs)

    gen.grade_completions = seen
    start = time.perf_counter()
    if backend != "openai":
        kw["engine"] = EngineConfig(backend=backend, enable_sleep_mode=False, **kw.pop("engine"))
    run_generate(
        str(DATA_FILE), str(out), model, template="gsm8k_chat",
        sampling=SamplingConfig(n=N, temperature=1.0, max_new_tokens=MAX_NEW), limit=QUESTIONS,
        require_format=False, max_per_question=N, dedupe=False, progress=False, **kw,
    )  # fmt: skip
    seconds = time.perf_counter() - start
    gen.grade_completions = grade
    return seconds, texts


def _peer(url: str, prompts: list) -> tuple[float, list[str]]:
    from openai import OpenAI

    client = OpenAI(base_url=url, api_key="unused", max_retries=3)

    def one(messages):
        reply = client.chat.completions.create(
            model="smollm2", messages=messages, n=N, temperature=1.0, max_tokens=MAX_NEW, seed=0
        )
        return [c.message.content or "" for c in reply.choices]

    start = time.perf_counter()
    with ThreadPoolExecutor(CONCURRENCY) as pool:
        texts = [t for group in pool.map(one, prompts) for t in group]
    return time.perf_counter() - start, texts


def main() -> None:
    global DATA_FILE
    from lit_align.data.sources import load_examples
    from lit_align.generate import GOLD_SYSTEM_PROMPTS, build_prompts
    from lit_align.models import load_tokenizer
    from tests.vllm_server import vllm_server

    data = Path(sys.argv[1]) if len(sys.argv) > 1 else DATA
    DATA_FILE = data / "gsm8k" / "train.jsonl"
    model = Path(os.environ["LIT_ALIGN_SMOLLM2_DIR"])
    tokenizer = load_tokenizer(str(model))
    examples = load_examples(str(DATA_FILE), limit=QUESTIONS, seed=0)
    prompts = build_prompts(examples, "gsm8k_chat", GOLD_SYSTEM_PROMPTS["gsm8k_chat"], "chat")
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        tmp_path = Path(tmp)
        with vllm_server(model, "smollm2", tmp_path / "server.log") as url:
            _peer(url, prompts[:8])  # warm-up
            runs = {
                "lit_align generate --base_url (endpoint)": _generate(
                    "openai",
                    "smollm2",
                    tmp_path / "a.jsonl",
                    base_url=url,
                    max_concurrency=CONCURRENCY,
                ),
                "openai client, 8 threads (peer)": _peer(url, prompts),
            }
        runs["lit_align generate --engine.backend vllm"] = _generate(
            "vllm", str(model), tmp_path / "b.jsonl", engine=dict(dtype="bfloat16",
            kv_cache_memory_bytes=256 * 2**20, max_model_len=1024, enforce_eager=True),
        )  # fmt: skip
    for name, (seconds, texts) in runs.items():
        tokens = sum(len(tokenizer(t, add_special_tokens=False)["input_ids"]) for t in texts)
        rows.append((name, seconds, len(texts), tokens))
    peer = rows[1][3] / rows[1][1]
    print(f"{QUESTIONS} GSM8K questions x n={N}, max_new_tokens={MAX_NEW}, SmolLM2-135M, CPU")
    print(f"{'run':<38}{'seconds':>9}{'samples':>9}{'tokens':>9}{'tok/s':>9}{'vs peer':>9}")
    for name, seconds, samples, tokens in rows:
        rate = tokens / seconds
        print(f"{name:<38}{seconds:>9.1f}{samples:>9}{tokens:>9}{rate:>9.0f}{rate / peer:>8.2f}x")


if __name__ == "__main__":
    main()
