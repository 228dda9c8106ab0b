"""VLLMEngine: its logic against a stand-in LLM (runs anywhere), and an API contract against the
installed vLLM's real signatures (marked `vllm`; skipped where vLLM is absent)."""

from __future__ import annotations

import inspect
from dataclasses import dataclass, field

import pytest
import torch

from lit_align.rollout.base import SamplingConfig
from lit_align.rollout.sync import EngineConfig
from lit_align.rollout.vllm import VLLMEngine, _load_into_worker, llm_kwargs, sampling_kwargs


@dataclass
class _Logprob:
    logprob: float


@dataclass
class _Out:
    index: int
    text: str
    token_ids: list[int]
    logprobs: list[dict[int, _Logprob]]
    finish_reason: str


@dataclass
class _Request:
    outputs: list[_Out]


@dataclass
class FakeLLM:
    """Records calls in order; generate answers two samples per prompt."""

    calls: list[tuple] = field(default_factory=list)
    loaded: dict[str, torch.Tensor] = field(default_factory=dict)

    def sleep(self, level=1):
        self.calls.append(("sleep", level))

    def wake_up(self, tags=None):
        self.calls.append(("wake_up", tuple(tags) if tags else None))

    def reset_prefix_cache(self):
        self.calls.append(("reset_prefix_cache",))

    def collective_rpc(self, method, args=()):
        self.calls.append(("collective_rpc", len(args[0])))

        class Model:
            def load_weights(model_self, weights):
                self.loaded.update(weights)
                return {n for n, _ in weights}

        class Worker:
            model_runner = type("Runner", (), {"model": Model()})()

        return [method(Worker(), *args)]

    def generate(self, prompts, params, use_tqdm=False):
        self.calls.append(("generate", len(prompts)))
        return [
            _Request(
                [
                    _Out(
                        1, "b </answer>", [7, 8], [{7: _Logprob(-0.1)}, {8: _Logprob(-0.2)}], "stop"
                    ),
                    _Out(0, "a", [5], [{5: _Logprob(-0.3)}], "length"),
                ]
            )
            for _ in prompts
        ]


def test_load_weights_in_buckets_then_resets_prefix_cache():
    llm = FakeLLM()
    engine = VLLMEngine(llm, bucket_bytes=3 * 4 * 4)  # three float32 4-vectors per bucket
    tensors = [(f"w{i}", torch.full((4,), float(i))) for i in range(7)]
    engine.load_weights(tensors)
    assert [c for c in llm.calls if c[0] == "collective_rpc"] == [
        ("collective_rpc", 3),
        ("collective_rpc", 3),
        ("collective_rpc", 1),
    ]
    assert llm.calls[-1] == ("reset_prefix_cache",)
    assert torch.equal(llm.loaded["w6"], torch.full((4,), 6.0))


def test_sleep_wake_order_around_weight_updates():
    llm = FakeLLM()
    engine = VLLMEngine(llm, sampling_params_cls=dict, tokens_prompt_cls=dict)
    engine.sleep()
    engine.load_weights([("w", torch.zeros(1))])  # wakes the weights only
    engine.generate([[1, 2]], SamplingConfig(n=2, max_new_tokens=4))  # then the KV cache
    names = [c[:2] for c in llm.calls]
    assert names[:3] == [("sleep", 1), ("wake_up", ("weights",)), ("collective_rpc", 1)]
    assert ("wake_up", ("kv_cache",)) in names and names.index(
        ("wake_up", ("kv_cache",))
    ) < names.index(("generate", 1))
    engine.sleep()
    engine.wake_up()  # no weight update in between: wake everything
    assert llm.calls[-1] == ("wake_up", None)


def test_generate_parses_outputs_in_sample_order():
    engine = VLLMEngine(FakeLLM(), sampling_params_cls=dict, tokens_prompt_cls=dict)
    out = engine.generate([[1], [2]], SamplingConfig(n=2))
    assert [c.prompt_index for c in out] == [0, 0, 1, 1]
    assert (
        out[0].token_ids == [5] and out[0].finish_reason == "length" and out[0].log_probs == [-0.3]
    )
    assert (
        out[1].text == "b </answer>"
        and out[1].log_probs == [-0.1, -0.2]
        and out[1].finish_reason == "stop"
    )


def test_kwargs_follow_the_config():
    kw = llm_kwargs(
        EngineConfig(backend="vllm", gpu_memory_utilization=0.4, max_model_len=2048), "Qwen/X"
    )
    assert (
        kw["model"] == "Qwen/X"
        and kw["gpu_memory_utilization"] == 0.4
        and kw["max_model_len"] == 2048
    )
    sk = sampling_kwargs(
        SamplingConfig(
            n=8, temperature=1.0, max_new_tokens=1024, min_new_tokens=4, stop=["</answer>"]
        ),
        3,
    )
    assert (
        sk["n"] == 8
        and sk["max_tokens"] == 1024
        and sk["min_tokens"] == 4
        and sk["stop"] == ["</answer>"]
    )
    assert sk["include_stop_str_in_output"] is True and sk["logprobs"] == 0 and sk["seed"] == 3


def test_vllm_backend_without_vllm_says_how_to_install(monkeypatch):
    import builtins

    real_import = builtins.__import__

    def no_vllm(name, *args, **kwargs):
        if name == "vllm":
            raise ImportError("no vllm")
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", no_vllm)
    with pytest.raises(ImportError, match=r"pip install 'lit-align\[vllm\]'"):
        VLLMEngine.from_config(EngineConfig(backend="vllm"), "m")


# --------------------------------------------------------------------------- API contract


@pytest.mark.vllm
def test_every_vllm_call_matches_the_installed_signatures():
    import vllm
    from vllm.engine.arg_utils import EngineArgs
    from vllm.outputs import CompletionOutput, RequestOutput

    # LLM(**llm_kwargs): explicit parameters, or EngineArgs fields reached through **kwargs.
    init = inspect.signature(vllm.LLM.__init__).parameters
    engine_fields = set(inspect.signature(EngineArgs).parameters)
    for key in llm_kwargs(EngineConfig(max_model_len=1024), "m"):
        assert key in init or key in engine_fields, f"vllm.LLM does not take {key!r}"
    # SamplingParams and TokensPrompt accept exactly what we pass.
    params = vllm.SamplingParams(
        **sampling_kwargs(SamplingConfig(n=2, stop=["</answer>"], min_new_tokens=1), 5)
    )
    assert params.include_stop_str_in_output and params.logprobs == 0 and params.n == 2
    assert vllm.TokensPrompt(prompt_token_ids=[1, 2])["prompt_token_ids"] == [1, 2]
    # The LLM methods we call, with the arguments we pass.
    inspect.signature(vllm.LLM.generate).bind(None, [], params, use_tqdm=False)
    inspect.signature(vllm.LLM.sleep).bind(None, level=1)
    inspect.signature(vllm.LLM.wake_up).bind(None, tags=["weights"])
    inspect.signature(vllm.LLM.reset_prefix_cache).bind(None)
    inspect.signature(vllm.LLM.collective_rpc).bind(None, _load_into_worker, args=([],))
    # What we read from the outputs.
    fields = set(inspect.signature(CompletionOutput).parameters)
    assert {"index", "text", "token_ids", "logprobs", "finish_reason"} <= fields
    assert "outputs" in inspect.signature(RequestOutput).parameters
    from vllm.logprobs import Logprob

    assert "logprob" in inspect.signature(Logprob).parameters
    # What _load_into_worker touches inside the worker.
    from vllm.model_executor.models.qwen2 import Qwen2ForCausalLM
    from vllm.v1.worker.gpu_worker import Worker

    assert "self.model_runner" in inspect.getsource(
        Worker.__init__
    ) or "self.model_runner" in inspect.getsource(Worker)
    assert "weights" in inspect.signature(Qwen2ForCausalLM.load_weights).parameters
    from vllm.v1.worker.gpu_model_runner import GPUModelRunner

    assert "self.model" in inspect.getsource(GPUModelRunner)
    assert vllm.__version__.startswith("0.32")
