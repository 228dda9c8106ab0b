"""The subcommands that are not Lightning runs: ``lit_align eval`` and ``lit_align generate``.

- ``eval``: zero-shot (or any checkpoint) evaluation: generate, grade, write ``generations.jsonl``,
  ``metrics.json`` and ``eval.json``, print a summary table.
- ``generate``: sample with a local engine or an OpenAI-compatible endpoint, grade, and keep the
  correct (and well-formatted) answers as an SFT JSONL (see :mod:`lit_align.generate`).
"""

from __future__ import annotations

from dataclasses import asdict
from typing import Any, Literal

from lit_align.engines.base import SamplingConfig
from lit_align.engines.factory import EngineConfig
from lit_align.environments.base import Environment
from lit_align.rewards.evaluators import RewardEvaluator

__all__ = ["ONE_OFF_ENGINE", "ONE_OFF_SAMPLING", "run_eval", "run_generate"]


# What a one-off command samples and runs on, unless told otherwise: greedy, 1,024 new tokens,
# the template's stop strings; the HF engine in the model's own dtype, no sleep mode (nothing
# trains beside it).
ONE_OFF_SAMPLING = SamplingConfig(temperature=0.0, max_new_tokens=1024)
ONE_OFF_ENGINE = EngineConfig(dtype="auto", gpu_memory_utilization=0.85, enable_sleep_mode=False)


def run_eval(
    model: str,
    data: str,
    output_dir: str = "eval_out",
    template: str = "r1_zero",
    evaluator: RewardEvaluator | None = None,
    sampling: SamplingConfig = ONE_OFF_SAMPLING,
    engine: EngineConfig = ONE_OFF_ENGINE,
    seed: int = 0,
    limit: int | None = None,
    split: str = "test",
    hf_config: str | None = None,
    overwrite: bool = False,
    environment: Environment | None = None,
    max_total_tokens: int | None = None,
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
        sampling: the same block as a training config's (``--sampling.temperature 0.7``,
            ``--sampling.n 4``: n > 1 adds pass@k and mean@n); default greedy, 1,024 new tokens,
            ``stop: null``: the template's stop strings.
        engine: the same block as a training config's (``--engine.backend vllm``,
            ``--engine.kv_cache_memory_bytes``…); ``max_batch_size`` is also the grading chunk.
            Default: HF engine, the model's dtype, no sleep mode.
        seed: seed of the ``limit`` subset.
        limit: evaluate a seeded subset of this many examples.
        split: split of ``hf:`` sources.
        hf_config: configuration of ``hf:`` sources.
        overwrite: replace the results of an earlier evaluation in ``output_dir`` (refused
            otherwise, before anything is loaded).
        environment: multi-turn episodes, as in a training config's
            ``data.init_args.environment`` (``--environment lit_align.environments.ToolEnvironment``
            with ``--environment.init_args.tools '[calculator]'``…; a chat template lists its
            tools); records then hold each episode's ``transcript``.
        max_total_tokens: an episode's token budget after the prompt (multi-turn).
    """
    from pathlib import Path

    from lit_align.data.base import default_evaluator
    from lit_align.data.sources import load_examples
    from lit_align.data.templates import with_template_stops
    from lit_align.engines.factory import engine_for_model
    from lit_align.evaluation import evaluate, format_summary, write_results
    from lit_align.models import check_model_source

    check_model_source(model)  # a mistyped run directory fails first, as a path
    earlier = [n for n in ("metrics.json", "generations.jsonl") if (Path(output_dir) / n).exists()]
    if earlier and not overwrite:
        raise FileExistsError(
            f"{output_dir} already holds an evaluation ({', '.join(earlier)}); choose another "
            "--output_dir, or pass --overwrite true to replace it"
        )
    if evaluator is None:
        evaluator = default_evaluator(template, data)
    sampling = with_template_stops(sampling, template)
    examples = load_examples(data, split=split, limit=limit, seed=seed, hf_config=hf_config)
    local, tokenizer = engine_for_model(model, engine)
    records, metrics = evaluate(
        local,
        tokenizer,
        examples,
        evaluator,
        sampling,
        template=template,  # type: ignore[arg-type]
        grade_batch_size=engine.max_batch_size,
        progress=True,
        environment=environment,
        max_total_tokens=max_total_tokens,
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
            sampling=asdict(sampling),
            engine=asdict(engine),
            environment=repr(environment) if environment is not None else None,
            max_total_tokens=max_total_tokens,
        ),
    )
    print(format_summary(metrics))
    print(f"\nwrote {output_dir}/generations.jsonl and {output_dir}/metrics.json")
    return metrics


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
    template: str = "gsm8k_chat",
    base_url: str | None = None,
    endpoint: Literal["chat", "completions"] = "chat",
    api_key_env: str | None = None,
    system_prompt: str | None = None,
    evaluator: RewardEvaluator | None = None,
    sampling: SamplingConfig = ONE_OFF_SAMPLING,
    engine: EngineConfig = ONE_OFF_ENGINE,
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
    overwrite: bool = False,
    progress: bool = True,
) -> dict[str, int]:
    """Sample answers, grade them, and write the correct ones as an SFT dataset (JSONL).

    Samples come from an OpenAI-compatible endpoint when ``base_url`` is given, else from a local
    engine (the ``engine`` block: ``--engine.backend vllm`` or ``hf``). Rerunning the same
    command continues an interrupted run (see :mod:`lit_align.generate`). The output trains as
    is: ``lit_align fit --config configs/sft_gsm8k.yaml --data.init_args.train_source OUTPUT``
    (``--data.init_args.limit 100`` for a subset).

    Args:
        data: JSONL path, ``hf:NAME`` or ``synthetic:TASK`` (GSM8K or MATH rows).
        output: the SFT JSONL to write (``OUTPUT.progress.jsonl`` goes beside it).
        model: the served model's name (with ``base_url``), or a hub id / local directory.
        template: ``gsm8k_chat`` (system prompt + question; ``<reasoning>``/``<answer>`` format),
            or a text template (``r1_zero``, ``question_only``; ``--endpoint completions`` with
            ``base_url``).
        base_url: an OpenAI-compatible endpoint's API root, e.g. ``http://127.0.0.1:8000/v1``;
            None: sample with the local ``engine``.
        endpoint: ``chat`` (``/chat/completions``) or ``completions`` (``/completions``).
        api_key_env: the environment variable with the API key (never a key itself); None: no key.
        system_prompt: the chat template's system message; None: a strict statement of the
            template's format (``lit_align.generate.GOLD_SYSTEM_PROMPTS``); "": none.
        evaluator: grades the answers (default: the template's, e.g. ``GSM8kEvaluator``).
        sampling: the same block as a training config's (``--sampling.n 4
            --sampling.temperature 0.7``); default greedy, 1,024 new tokens, ``stop: null``: the
            template's stop strings (``</answer>`` for r1_zero).
        engine: the local engine, the same block as a training config's (``--engine.backend
            vllm``, ``--engine.dtype``, ``--engine.max_batch_size``…); not used with ``base_url``.
        seed: seed of the ``limit`` subset (the same subset on every rerun).
        limit: a seeded subset of this many questions.
        split: split of ``hf:`` sources.
        hf_config: configuration of ``hf:`` sources (``main`` for ``openai/gsm8k``).
        max_per_question: correct answers kept per question at most.
        require_format: keep only answers in the template's format (GSM8K: the strict XML layout).
        dedupe: keep identical answers to a question once.
        max_concurrency: requests in flight (``base_url``).
        max_retries: retries of a failed request (429, 5xx, timeouts) before the question counts
            as an API error (a rerun tries it again).
        timeout_s: read timeout of one request (``base_url``).
        chunk_size: questions per engine call and per progress record (default: 4 ×
            max_concurrency with ``base_url``, ``engine.max_batch_size`` for ``hf``, 256 for
            ``vllm``).
        overwrite: start again, deleting an earlier output and its progress file.
        progress: show a progress bar.

    Returns:
        Totals: kept, wrong, unparseable, duplicate, surplus (correct beyond max_per_question),
        questions, questions_without_kept, and this run's api_errors.
    """
    from pathlib import Path

    from lit_align.data.base import default_evaluator
    from lit_align.data.sources import load_examples
    from lit_align.data.templates import TEMPLATE_NAMES, with_template_stops
    from lit_align.engines.factory import engine_for_model
    from lit_align.engines.openai_api import OpenAICompatibleEngine
    from lit_align.engines.text import LocalTextEngine
    from lit_align.evaluation import package_versions
    from lit_align.generate import GOLD_SYSTEM_PROMPTS, Ledger, build_prompts, generate_dataset

    if template not in TEMPLATE_NAMES:
        raise ValueError(
            f"unknown template {template!r}; accepted values: {', '.join(TEMPLATE_NAMES)}"
        )
    if sampling.n > 1 and sampling.temperature == 0:
        raise ValueError(
            f"sampling.n={sampling.n} greedy samples would be identical; set "
            "--sampling.temperature (e.g. 0.7)"
        )
    if max_per_question < 1:
        raise ValueError(f"max_per_question must be >= 1, got {max_per_question}")
    remote = base_url is not None
    if remote and engine != ONE_OFF_ENGINE:
        raise ValueError("the engine block is for a local engine; with --base_url leave it out")
    if not remote and api_key_env:
        raise ValueError("--api_key_env is for an endpoint: give --base_url too")
    if not remote:
        from lit_align.models import check_model_source

        check_model_source(model)
    if system_prompt is None:
        system_prompt = GOLD_SYSTEM_PROMPTS.get(template)
    evaluator = evaluator if evaluator is not None else default_evaluator(template, data)
    sampling = with_template_stops(sampling, template)
    examples = load_examples(data, split=split, limit=limit, seed=seed, hf_config=hf_config)
    prompts = build_prompts(
        examples,
        template,  # type: ignore[arg-type]
        system_prompt or None,
        endpoint if remote else None,
    )
    backend = "openai" if remote else engine.backend
    settings = {
        "backend": backend,
        "model": model,
        "endpoint": endpoint if remote else None,
        "base_url": base_url,
        "template": template,
        "system_prompt": system_prompt or None,
        "evaluator": type(evaluator).__name__,
        "sampling": asdict(sampling),
        "max_per_question": max_per_question,
        "require_format": require_format,
        "dedupe": dedupe,
        "data": data,
    }
    ledger = Ledger(Path(output))
    ledger.start(settings, overwrite)  # before loading anything: a refusal costs nothing
    source: Any
    if remote:
        assert base_url is not None
        source = OpenAICompatibleEngine(
            base_url,
            model,
            endpoint=endpoint,
            api_key_env=api_key_env,
            max_concurrency=max_concurrency,
            max_retries=max_retries,
            timeout_s=timeout_s,
        )
        source.check()  # a wrong URL, key or model stops here, with the fix
        chunk_size = chunk_size or 4 * max_concurrency
    else:
        local, tokenizer = engine_for_model(model, engine, progress=False)
        source = LocalTextEngine(local, tokenizer)
        chunk_size = chunk_size or (256 if backend == "vllm" else engine.max_batch_size)
    provenance = {
        "backend": backend,
        "model": model,
        "template": template,
        "system_prompt": system_prompt or None,
        "sampling": asdict(sampling),
        "versions": package_versions(),
    }
    totals = generate_dataset(
        source,
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
    if remote:
        source.close()
    print(_generate_summary(totals, sampling.n, output))
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
