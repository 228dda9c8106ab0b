"""The subcommands that are not Lightning runs: ``lit_align eval`` and ``lit_align generate``.

- ``eval``: zero-shot (or any checkpoint) evaluation: generate, grade, write ``generations.jsonl``,
  ``metrics.json`` and ``eval.json``, print a summary table.
- ``generate``: sample with a local engine or an OpenAI-compatible endpoint, grade, and keep the
  correct (and well-formatted) answers as an SFT JSONL (see :mod:`lit_align.generate`).
"""

from __future__ import annotations

from typing import Any, Literal

from lit_align.rewards.evaluators import RewardEvaluator

__all__ = ["run_eval", "run_generate"]


def run_eval(
    model: str,
    data: str,
    output_dir: str = "eval_out",
    template: str = "r1_zero",
    evaluator: RewardEvaluator | None = None,
    n: int = 1,
    temperature: float = 0.0,
    top_p: float = 1.0,
    max_new_tokens: int = 1024,
    min_new_tokens: int = 0,
    stop: list[str] | None = None,
    seed: int = 0,
    limit: int | None = None,
    split: str = "test",
    hf_config: str | None = None,
    dtype: str = "auto",
    batch_size: int = 64,
    backend: Literal["hf", "vllm"] = "hf",
    gpu_memory_utilization: float = 0.85,
    kv_cache_memory_bytes: int | None = None,
    max_model_len: int | None = None,
    enforce_eager: bool = False,
    overwrite: bool = False,
) -> dict[str, float]:
    """Evaluate a model on a dataset: generate, grade, write records and metrics.

    ``output_dir`` also gets ``eval.json``: what was evaluated (model, data, split, limit,
    template, evaluator, sampling, engine, seed) and the versions of lit_align, torch,
    transformers (and vLLM), so a result can be traced and redone.

    Args:
        model: hub id, local directory (e.g. a run's ``hf_model``) or ``tiny:…``.
        data: JSONL path, ``hf:NAME`` or ``synthetic:TASK``.
        output_dir: where ``generations.jsonl`` and ``metrics.json`` go.
        template: prompt template (``r1_zero``, ``question_only``, ``gsm8k_chat``, ``demo``).
        evaluator: reward evaluator (class path); default ``MathEvaluator`` for the template
            (``GSM8kEvaluator`` for ``gsm8k_chat``).
        n: samples per prompt (n > 1 adds pass@k and mean@n).
        temperature: 0 is greedy.
        top_p: nucleus mass.
        max_new_tokens: generation budget.
        min_new_tokens: minimum generation length.
        stop: stop strings (default: the template's, e.g. ``</answer>``).
        seed: sampling and subset seed.
        limit: evaluate a seeded subset of this many examples.
        split: split of ``hf:`` sources.
        hf_config: configuration of ``hf:`` sources.
        dtype: model dtype.
        batch_size: prompts per HF ``generate`` call, and responses per grading chunk (vLLM
            gets every prompt at once and batches them itself).
        backend: ``hf`` or ``vllm`` (loads only the tokenizer here; vLLM loads the weights).
        gpu_memory_utilization: vLLM's share of GPU memory.
        kv_cache_memory_bytes: vLLM's KV cache in bytes (default on CPU: 1 GiB).
        max_model_len: vLLM's context length (None: the model's).
        enforce_eager: vLLM without graph compilation (faster start for small models).
        overwrite: replace the results of an earlier evaluation in ``output_dir`` (refused
            otherwise, before anything is loaded).
    """
    from pathlib import Path

    from lit_align.data.base import default_evaluator
    from lit_align.data.sources import load_examples
    from lit_align.data.templates import stop_strings_for
    from lit_align.evaluation import evaluate, format_summary, write_results
    from lit_align.models import check_model_source
    from lit_align.rollout.base import SamplingConfig
    from lit_align.rollout.factory import engine_for_model

    check_model_source(model)  # a mistyped run directory fails first, as a path
    earlier = [n for n in ("metrics.json", "generations.jsonl") if (Path(output_dir) / n).exists()]
    if earlier and not overwrite:
        raise FileExistsError(
            f"{output_dir} already holds an evaluation ({', '.join(earlier)}); choose another "
            "--output_dir, or pass --overwrite true to replace it"
        )
    if evaluator is None:
        evaluator = default_evaluator(template)
    examples = load_examples(data, split=split, limit=limit, seed=seed, hf_config=hf_config)
    config = _engine_config(
        backend, batch_size, gpu_memory_utilization, kv_cache_memory_bytes, dtype,
        max_model_len, enforce_eager, seed,
    )  # fmt: skip
    engine, tokenizer = engine_for_model(model, config, dtype=dtype)
    sampling = SamplingConfig(
        n=n,
        temperature=temperature,
        top_p=top_p,
        max_new_tokens=max_new_tokens,
        min_new_tokens=min_new_tokens,
        stop=stop_strings_for(template) if stop is None else stop,
        seed=seed,
    )
    records, metrics = evaluate(
        engine,
        tokenizer,
        examples,
        evaluator,
        sampling,
        template=template,  # type: ignore[arg-type]
        grade_batch_size=batch_size,
        progress=True,
    )
    write_results(output_dir, records, metrics)
    _write_eval_record(
        Path(output_dir) / "eval.json",
        dict(
            model=model,
            data=data,
            split=split,
            hf_config=hf_config,
            limit=limit,
            template=template,
            evaluator=type(evaluator).__name__,
            seed=seed,
            examples=len(examples),
            sampling=vars(sampling),
            engine=vars(config),
        ),
    )
    print(format_summary(metrics))
    print(f"\nwrote {output_dir}/generations.jsonl and {output_dir}/metrics.json")
    return metrics


def _engine_config(
    backend: str,
    batch_size: int,
    gpu_memory_utilization: float,
    kv_cache_memory_bytes: int | None,
    dtype: str,
    max_model_len: int | None,
    enforce_eager: bool,
    seed: int,
) -> Any:
    """The engine of a one-off command (eval, generate): nothing trains beside it, so no sleep."""
    from lit_align.rollout.factory import EngineConfig

    return EngineConfig(
        backend=backend,  # type: ignore[arg-type]
        max_batch_size=batch_size,
        gpu_memory_utilization=gpu_memory_utilization,
        kv_cache_memory_bytes=kv_cache_memory_bytes,
        dtype=dtype,
        max_model_len=max_model_len,
        enable_sleep_mode=False,
        enforce_eager=enforce_eager,
        seed=seed,
    )


def _write_eval_record(path: Any, what: dict[str, Any]) -> None:
    import json
    from datetime import datetime, timezone

    from lit_align.evaluation import package_versions

    record = {
        **what,
        "versions": package_versions(),
        "finished": datetime.now(timezone.utc).isoformat(),
    }
    path.write_text(json.dumps(record, indent=2, default=str) + "\n")


def run_generate(
    data: str,
    output: str,
    model: str,
    backend: Literal["openai", "vllm", "hf"] = "openai",
    template: str = "gsm8k_chat",
    base_url: str | None = None,
    endpoint: Literal["chat", "completions"] = "chat",
    api_key_env: str | None = None,
    system_prompt: str | None = None,
    evaluator: RewardEvaluator | None = None,
    n: int = 1,
    temperature: float = 0.0,
    top_p: float = 1.0,
    max_new_tokens: int = 1024,
    stop: list[str] | None = None,
    seed: int = 0,
    limit: int | None = None,
    split: str = "train",
    hf_config: str | None = None,
    max_per_question: int = 1,
    require_format: bool = True,
    dedupe: bool = True,
    max_concurrency: int = 8,
    max_retries: int = 3,
    timeout_s: float = 300.0,
    chunk_size: int | None = None,
    dtype: str = "auto",
    batch_size: int = 64,
    gpu_memory_utilization: float = 0.85,
    kv_cache_memory_bytes: int | None = None,
    max_model_len: int | None = None,
    enforce_eager: bool = False,
    overwrite: bool = False,
    progress: bool = True,
) -> dict[str, int]:
    """Sample answers, grade them, and write the correct ones as an SFT dataset (JSONL).

    Rerunning the same command continues an interrupted run (see :mod:`lit_align.generate`).
    The output trains as is: ``lit_align fit --config configs/sft_gsm8k.yaml
    --data.init_args.train_source OUTPUT`` (``--data.init_args.limit 100`` for a subset).

    Args:
        data: JSONL path, ``hf:NAME`` or ``synthetic:TASK`` (GSM8K or MATH rows).
        output: the SFT JSONL to write (``OUTPUT.progress.jsonl`` goes beside it).
        model: the served model's name (``openai``), or a hub id / local directory (``vllm``, ``hf``).
        backend: ``openai`` (an OpenAI-compatible endpoint at ``base_url``), ``vllm`` or ``hf``.
        template: ``gsm8k_chat`` (system prompt + question; ``<reasoning>``/``<answer>`` format),
            or a text template (``r1_zero``, ``question_only``; ``--endpoint completions`` for
            ``openai``).
        base_url: the endpoint's API root, e.g. ``http://127.0.0.1:8000/v1`` (``openai`` only).
        endpoint: ``chat`` (``/chat/completions``) or ``completions`` (``/completions``).
        api_key_env: the environment variable with the API key (never a key itself); None: no key.
        system_prompt: the chat template's system message; None: a strict statement of the
            template's format (``lit_align.generate.GOLD_SYSTEM_PROMPTS``); "": none.
        evaluator: grades the answers (default: the template's, e.g. ``GSM8kEvaluator``).
        n: samples per question.
        temperature: 0 is greedy (n must then be 1).
        top_p: nucleus mass.
        max_new_tokens: generation budget per sample.
        stop: stop strings (default: the template's, e.g. ``</answer>`` for r1_zero).
        seed: sampling seed, and the seed of the ``limit`` subset.
        limit: a seeded subset of this many questions (the same subset on every rerun).
        split: split of ``hf:`` sources.
        hf_config: configuration of ``hf:`` sources (``main`` for ``openai/gsm8k``).
        max_per_question: correct answers kept per question at most.
        require_format: keep only answers in the template's format (GSM8K: the strict XML layout).
        dedupe: keep identical answers to a question once.
        max_concurrency: requests in flight (``openai``).
        max_retries: retries of a failed request (429, 5xx, timeouts) before the question counts
            as an API error (a rerun tries it again).
        timeout_s: read timeout of one request (``openai``).
        chunk_size: questions per engine call and per progress record (default: 4 ×
            max_concurrency for ``openai``, batch_size for ``hf``, 256 for ``vllm``).
        dtype: model dtype (``vllm``, ``hf``).
        batch_size: prompts per HF ``generate`` call.
        gpu_memory_utilization: vLLM's share of GPU memory.
        kv_cache_memory_bytes: vLLM's KV cache in bytes (default on CPU: 1 GiB).
        max_model_len: vLLM's context length.
        enforce_eager: vLLM without graph compilation.
        overwrite: start again, deleting an earlier output and its progress file.
        progress: show a progress bar.

    Returns:
        Totals: kept, wrong, unparseable, duplicate, surplus (correct beyond max_per_question),
        questions, questions_without_kept, and this run's api_errors.
    """
    from pathlib import Path

    from lit_align.data.base import default_evaluator
    from lit_align.data.sources import load_examples
    from lit_align.data.templates import TEMPLATE_NAMES, stop_strings_for
    from lit_align.evaluation import package_versions
    from lit_align.generate import GOLD_SYSTEM_PROMPTS, Ledger, build_prompts, generate_dataset
    from lit_align.rollout.base import SamplingConfig
    from lit_align.rollout.factory import engine_for_model
    from lit_align.rollout.openai_api import OpenAICompatibleEngine
    from lit_align.rollout.text import LocalTextEngine

    if template not in TEMPLATE_NAMES:
        raise ValueError(
            f"unknown template {template!r}; accepted values: {', '.join(TEMPLATE_NAMES)}"
        )
    if n > 1 and temperature == 0:
        raise ValueError(f"n={n} greedy samples would be identical; set --temperature (e.g. 0.7)")
    if max_per_question < 1:
        raise ValueError(f"max_per_question must be >= 1, got {max_per_question}")
    if backend == "openai" and not base_url:
        raise ValueError("--backend openai needs --base_url (e.g. http://127.0.0.1:8000/v1)")
    if backend != "openai" and (base_url or api_key_env):
        raise ValueError(f"--base_url and --api_key_env are for --backend openai, not {backend}")
    if backend != "openai":
        from lit_align.models import check_model_source

        check_model_source(model)
    if system_prompt is None:
        system_prompt = GOLD_SYSTEM_PROMPTS.get(template)
    evaluator = evaluator if evaluator is not None else default_evaluator(template)
    sampling = SamplingConfig(
        n=n,
        temperature=temperature,
        top_p=top_p,
        max_new_tokens=max_new_tokens,
        stop=stop_strings_for(template) if stop is None else stop,  # type: ignore[arg-type]
        seed=seed,
    )
    examples = load_examples(data, split=split, limit=limit, seed=seed, hf_config=hf_config)
    prompts = build_prompts(
        examples,
        template,  # type: ignore[arg-type]
        system_prompt or None,
        endpoint if backend == "openai" else None,
    )
    settings = {
        "backend": backend,
        "model": model,
        "endpoint": endpoint if backend == "openai" else None,
        "base_url": base_url,
        "template": template,
        "system_prompt": system_prompt or None,
        "evaluator": type(evaluator).__name__,
        "sampling": vars(sampling),
        "max_per_question": max_per_question,
        "require_format": require_format,
        "dedupe": dedupe,
        "data": data,
    }
    ledger = Ledger(Path(output))
    ledger.start(settings, overwrite)  # before loading anything: a refusal costs nothing
    engine: Any
    if backend == "openai":
        assert base_url is not None
        engine = OpenAICompatibleEngine(
            base_url,
            model,
            endpoint=endpoint,
            api_key_env=api_key_env,
            max_concurrency=max_concurrency,
            max_retries=max_retries,
            timeout_s=timeout_s,
        )
        engine.check()  # a wrong URL, key or model stops here, with the fix
        chunk_size = chunk_size or 4 * max_concurrency
    else:
        config = _engine_config(
            backend, batch_size, gpu_memory_utilization, kv_cache_memory_bytes, dtype,
            max_model_len, enforce_eager, seed,
        )  # fmt: skip
        local, tokenizer = engine_for_model(model, config, dtype=dtype, progress=False)
        engine = LocalTextEngine(local, tokenizer)
        chunk_size = chunk_size or (256 if backend == "vllm" else batch_size)
    provenance = {
        "backend": backend,
        "model": model,
        "template": template,
        "system_prompt": system_prompt or None,
        "sampling": vars(sampling),
        "versions": package_versions(),
    }
    totals = generate_dataset(
        engine,
        examples,
        prompts,
        evaluator,
        sampling,
        ledger,
        provenance,
        max_per_question=max_per_question,
        require_format=require_format,
        dedupe=dedupe,
        chunk_size=chunk_size,
        progress=progress,
    )
    if backend == "openai":
        engine.close()
    print(_generate_summary(totals, n, output))
    return totals


def _generate_summary(totals: dict[str, int], n: int, output: str) -> str:
    samples = sum(totals[k] for k in ("kept", "wrong", "unparseable", "duplicate", "surplus"))
    lines = [
        f"{'questions done':<26}{totals['questions']:>8}",
        f"{'  without a kept answer':<26}{totals['questions_without_kept']:>8}",
        f"{'samples graded':<26}{samples:>8}   ({n} per question)",
        *(
            f"{'  ' + key:<26}{totals[key]:>8}"
            for key in ("kept", "wrong", "unparseable", "duplicate", "surplus")
        ),
        f"{'API errors (this run)':<26}{totals['api_errors']:>8}"
        + ("   (rerun the command to retry them)" if totals["api_errors"] else ""),
    ]
    return "\n".join(lines) + f"\n\nwrote {output}"
