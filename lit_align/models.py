"""Load causal LMs and tokenizers; build tiny offline models for tests and CPU demos.

``load_model_and_tokenizer`` reads a hub id or a local directory. ``build_tiny_model`` makes a
small Qwen2-architecture model with a byte-level BPE tokenizer trained in code on a fixed corpus,
so tests and demos never download anything.
"""

from __future__ import annotations

import importlib.util
import logging
import re
import tempfile
from collections.abc import Iterable
from pathlib import Path
from typing import Any, Literal

import torch

from lit_align.lora import QUANTIZATION_FILE, is_adapter_folder, merged_model
from lit_align.quantization import QuantizationConfig, bnb_config, plain_config, train_safe

log = logging.getLogger(__name__)

__all__ = [
    "CHATML_TEMPLATE",
    "build_tiny_model",
    "build_tiny_tokenizer",
    "check_model_source",
    "load_model_and_tokenizer",
    "load_tokenizer",
    "parse_tiny_spec",
    "resolve_attn_implementation",
    "resolve_dtype",
    "save_model_folder",
    "save_tiny_model",
]

AttnImpl = Literal["auto", "flash_attention_2", "sdpa", "eager"]

_DTYPES: dict[str, torch.dtype] = {
    "float32": torch.float32,
    "fp32": torch.float32,
    "bfloat16": torch.bfloat16,
    "bf16": torch.bfloat16,
    "float16": torch.float16,
    "fp16": torch.float16,
}

# ChatML, the format of Qwen2 instruct models; `add_generation_prompt` opens an assistant turn.
CHATML_TEMPLATE = (
    "{% for message in messages %}"
    "{{ '<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)


def resolve_dtype(dtype: str | torch.dtype) -> torch.dtype | str:
    """Map ``"bfloat16"``/``"bf16"``/… to a torch dtype; ``"auto"`` stays (the checkpoint's dtype)."""
    if isinstance(dtype, torch.dtype) or dtype == "auto":
        return dtype
    if dtype not in _DTYPES:
        raise ValueError(f"unknown dtype {dtype!r}; accepted values: auto, {', '.join(_DTYPES)}")
    return _DTYPES[dtype]


def resolve_attn_implementation(attn_implementation: AttnImpl = "auto") -> str:
    """``auto`` → ``flash_attention_2`` when flash-attn is importable and CUDA is present, else ``sdpa``."""
    choices = ("auto", "flash_attention_2", "sdpa", "eager")
    if attn_implementation not in choices:
        raise ValueError(
            f"unknown attn_implementation {attn_implementation!r}; accepted values: {', '.join(choices)}"
        )
    if attn_implementation != "auto":
        return attn_implementation
    if torch.cuda.is_available() and importlib.util.find_spec("flash_attn") is not None:
        return "flash_attention_2"
    return "sdpa"


# A hub repo id: ``name`` or ``namespace/name`` (letters, digits, -, _, .), as the hub allows.
_REPO_ID = re.compile(r"^[A-Za-z0-9][\w.-]*(/[\w.-]+)?$")


def check_model_source(name_or_path: str | Path) -> None:
    """Raise ``FileNotFoundError`` for a model path that does not exist (instead of the hub's
    "Repo id must be in the form …"): anything that is not a local directory, a ``tiny:`` spec
    or shaped like a hub repo id (``name`` or ``namespace/name``) is a path."""
    name = str(name_or_path)
    if name.startswith("tiny:") or name == "tiny" or Path(name).exists():
        return
    if _REPO_ID.match(name) and not name.startswith((".", "~")) and "\\" not in name:
        return
    parent = next((p for p in Path(name).absolute().parents if p.exists()), None)
    raise FileNotFoundError(
        f"model {name}: no such directory (nearest existing folder: {parent}); pass a local "
        "model directory (e.g. a run's hf_model/), a hub id such as Qwen/Qwen2.5-Math-1.5B, "
        "or tiny:… for a model built in code"
    )


def _load_adapter_folder(
    folder: str,
    dtype: Any,
    attn_implementation: AttnImpl,
    gradient_checkpointing: bool,
    trust_remote_code: bool,
    device: Any,
    padding_side: Literal["left", "right"],
) -> tuple[Any, Any]:
    """A LoRA adapter folder (``HFExport`` of a LoRA run): its base model, named in
    ``adapter_config.json``, with the adapter merged in; the folder's tokenizer. A QLoRA adapter
    (``base_quantization.json`` beside it) goes on the 4-bit base it was trained on, merged into
    that base's dequantized weights: the function that was trained, in plain weights."""
    import json

    from peft import PeftModel

    base_name = json.loads((Path(folder) / "adapter_config.json").read_text()).get(
        "base_model_name_or_path"
    )
    if not base_name:
        raise ValueError(f"{folder}/adapter_config.json names no base_model_name_or_path")
    quantization = None
    if (Path(folder) / QUANTIZATION_FILE).is_file():
        settings = json.loads((Path(folder) / QUANTIZATION_FILE).read_text())
        quantization = QuantizationConfig(**settings)
    base, tokenizer = load_model_and_tokenizer(
        base_name, dtype, attn_implementation, False, trust_remote_code, None, padding_side,
        quantization,
    )  # fmt: skip
    if (Path(folder) / "tokenizer_config.json").exists():
        tokenizer = load_tokenizer(folder, trust_remote_code, padding_side)
    model = PeftModel.from_pretrained(base, folder)
    # peft merges a full-precision base in place; a 4-bit one would merge into its 4-bit codes.
    model = merged_model(model) if quantization is not None else model.merge_and_unload()
    return _finish(model, gradient_checkpointing, device), tokenizer


def load_model_and_tokenizer(
    name_or_path: str | Path,
    dtype: str | torch.dtype = "auto",
    attn_implementation: AttnImpl = "auto",
    gradient_checkpointing: bool = False,
    trust_remote_code: bool = False,
    device: str | torch.device | None = None,
    padding_side: Literal["left", "right"] = "right",
    quantization: QuantizationConfig | None = None,
) -> tuple[Any, Any]:
    """Load a causal LM and its tokenizer from the Hugging Face hub or a local directory.

    Args:
        name_or_path: hub id (``Qwen/Qwen2.5-Math-1.5B``), local directory (a LoRA adapter
            folder: its base with the adapter merged in), or ``tiny:…`` for a
            tiny model built in code (``tiny:hidden_size=128,num_layers=4``; see
            :func:`build_tiny_model`).
        dtype: ``auto`` (the checkpoint's), ``bfloat16``, ``float16``, ``float32`` or a torch dtype.
        attn_implementation: ``auto`` picks flash_attention_2 when flash-attn and CUDA are present,
            else sdpa.
        gradient_checkpointing: recompute activations in backward (non-reentrant); the model is
            put in train mode, since HF disables checkpointing in eval mode.
        trust_remote_code: run modeling code shipped with the checkpoint. Only when you trust it.
        device: where to put the model; ``None`` leaves it on the CPU (Lightning moves it).
        padding_side: tokenizer padding side (right for training; the engines pad themselves).
        quantization: load the linear layers in 4 bits through bitsandbytes (QLoRA's frozen
            base; see :mod:`lit_align.quantization`). A ``tiny:`` model is saved to a temporary
            folder and loaded back quantized, the same path as a real one.

    Returns:
        (model, tokenizer); the tokenizer always has a pad token (eos when it had none).
    """
    from transformers import AutoModelForCausalLM

    name = str(name_or_path)
    if quantization is not None and (name.startswith("tiny:") or name == "tiny"):
        with tempfile.TemporaryDirectory(prefix="lit_align_tiny_") as folder:
            save_tiny_model(folder, **parse_tiny_spec(name))
            return load_model_and_tokenizer(
                folder, dtype, attn_implementation, gradient_checkpointing, trust_remote_code,
                device, padding_side, quantization,
            )  # fmt: skip
    if name.startswith("tiny:") or name == "tiny":
        model, tokenizer = build_tiny_model(**parse_tiny_spec(name))
        tokenizer.padding_side = padding_side
        model = model.to(resolve_dtype(dtype)) if dtype != "auto" else model
        return _finish(model, gradient_checkpointing, device), tokenizer

    check_model_source(name)
    if is_adapter_folder(name):
        if quantization is not None:
            raise ValueError(
                f"{name} is a LoRA adapter folder: quantization applies to a base model"
            )
        return _load_adapter_folder(
            name, dtype, attn_implementation, gradient_checkpointing, trust_remote_code, device,
            padding_side,
        )  # fmt: skip
    tokenizer = load_tokenizer(name_or_path, trust_remote_code, padding_side)
    quantized = {}
    if quantization is not None:  # on the GPU when there is one (bitsandbytes' placement)
        quantized["quantization_config"] = bnb_config(quantization, resolve_dtype(dtype))
    model = AutoModelForCausalLM.from_pretrained(
        str(name_or_path),
        dtype=resolve_dtype(dtype),
        attn_implementation=resolve_attn_implementation(attn_implementation),
        trust_remote_code=trust_remote_code,
        **quantized,
    )
    if quantization is not None:
        model = train_safe(model)
    return _finish(model, gradient_checkpointing, device), tokenizer


def load_tokenizer(
    name_or_path: str | Path,
    trust_remote_code: bool = False,
    padding_side: Literal["left", "right"] = "right",
) -> Any:
    """The tokenizer of a hub id or local directory, with a pad token (eos when it had none)."""
    from transformers import AutoTokenizer

    check_model_source(name_or_path)
    tokenizer = AutoTokenizer.from_pretrained(
        str(name_or_path), trust_remote_code=trust_remote_code, padding_side=padding_side
    )
    if tokenizer.pad_token_id is None:
        if tokenizer.eos_token is None:
            raise ValueError(f"tokenizer of {name_or_path} has neither a pad nor an eos token")
        tokenizer.pad_token = tokenizer.eos_token
    return tokenizer


def _finish(model: Any, gradient_checkpointing: bool, device: str | torch.device | None) -> Any:
    if gradient_checkpointing:
        kwargs = {"use_reentrant": False}
        if hasattr(model, "activation_checkpointing_enable"):  # transformers >= 5 name
            model.activation_checkpointing_enable(activation_checkpointing_kwargs=kwargs)
        else:
            model.gradient_checkpointing_enable(gradient_checkpointing_kwargs=kwargs)
        model.config.use_cache = False
        model.train()
    if device is not None:
        model.to(device)
    return model


def parse_tiny_spec(name: str) -> dict[str, int]:
    """``tiny:hidden_size=128,num_layers=4`` → keyword arguments of :func:`build_tiny_model`."""
    spec = name.partition(":")[2]
    allowed = {
        "hidden_size",
        "num_layers",
        "num_heads",
        "num_kv_heads",
        "intermediate_size",
        "max_position_embeddings",
        "seed",
    }
    kwargs = {}
    for item in filter(None, spec.split(",")):
        key, _, value = item.partition("=")
        key = key.strip()
        if key not in allowed or not value.strip().isdigit():
            raise ValueError(
                f"bad tiny model spec {name!r}: expected tiny:key=int,… with keys {', '.join(sorted(allowed))}"
            )
        kwargs[key] = int(value)
    return kwargs


# --------------------------------------------------------------------------- tiny models

# Training text for the tiny tokenizer: the prompt templates' words, tags and arithmetic.
_TINY_CORPUS = [
    "A conversation between User and Assistant. The User asks a question, and the Assistant "
    "solves it. The Assistant first thinks about the reasoning process in the mind and then "
    "provides the User with the answer. The reasoning process is enclosed within <think> </think> "
    "and answer is enclosed within <answer> </answer> tags, respectively, i.e., <think> reasoning "
    "process here </think> <answer> answer here </answer>.",
    "User: What is 12 + 35? Assistant: <think> 12 + 35 = 47 </think> <answer> 47 </answer>",
    "<reasoning> add the numbers </reasoning> <answer> 9 </answer> \\boxed{9} \\frac{1}{2}",
    "Respond in the following format: <reasoning> ... </reasoning> <answer> ... </answer>",
    "the of and to a in is it that for on with as was he she they we you plus minus times sum",
    "Compute Find What How many Calculate Solve Let If then total each more less than",
    "0 1 2 3 4 5 6 7 8 9 + - * / = ( ) , . ? ! : ; ' \" $ % ^ _ { } [ ] \\ # @ & | < >",
]

SPECIAL_TOKENS = ["<|endoftext|>", "<|pad|>", "<|im_start|>", "<|im_end|>"]


def build_tiny_tokenizer(vocab_size: int = 512) -> Any:
    """A byte-level BPE tokenizer trained in code (deterministic), with pad/eos and a chat template.

    Digits are split one per token (as Qwen does), so arithmetic is learnable by tiny models; any
    text round-trips through encode/decode because the byte-level alphabet covers every byte.
    """
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.Sequence(
        [
            pre_tokenizers.Digits(individual_digits=True),
            pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True),
        ]
    )
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=SPECIAL_TOKENS,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(_TINY_CORPUS * 4, trainer=trainer)
    return PreTrainedTokenizerFast(
        tokenizer_object=tok,
        eos_token="<|endoftext|>",
        pad_token="<|pad|>",
        padding_side="right",
        chat_template=CHATML_TEMPLATE,
        model_max_length=4096,
    )


def build_tiny_model(
    tokenizer: Any | None = None,
    hidden_size: int = 64,
    num_layers: int = 2,
    num_heads: int = 4,
    num_kv_heads: int = 2,
    intermediate_size: int = 128,
    max_position_embeddings: int = 2048,
    seed: int = 0,
) -> tuple[Any, Any]:
    """A small Qwen2-architecture causal LM (≈100k parameters by default) and its tokenizer.

    Returns:
        (model in float32, tokenizer). Weights are deterministic given ``seed``.
    """
    from transformers import Qwen2Config, Qwen2ForCausalLM

    tokenizer = tokenizer if tokenizer is not None else build_tiny_tokenizer()
    config = Qwen2Config(
        vocab_size=len(tokenizer),
        hidden_size=hidden_size,
        intermediate_size=intermediate_size,
        num_hidden_layers=num_layers,
        num_attention_heads=num_heads,
        num_key_value_heads=num_kv_heads,
        max_position_embeddings=max_position_embeddings,
        tie_word_embeddings=True,
        bos_token_id=None,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = Qwen2ForCausalLM(config)
    model.generation_config.eos_token_id = tokenizer.eos_token_id
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    return model, tokenizer


def save_model_folder(
    path: str | Path,
    items: Iterable[tuple[str, torch.Tensor]],
    config: Any,
    generation_config: Any = None,
    tokenizer: Any = None,
) -> Path:
    """Write a whole model folder that transformers and vLLM load as is: ``items`` (Hugging Face
    name, full tensor) to ``model.safetensors``, ``config`` without 4-bit settings (the tensors
    are plain), the generation config and tokenizer when given. Written by hand on the calling
    rank (``save_pretrained`` writes on rank 0 only under torch.distributed)."""
    from safetensors.torch import save_file

    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)
    tied = bool(getattr(config, "tie_word_embeddings", False))
    state = {
        name: tensor.contiguous()
        for name, tensor in items
        if not (tied and name == "lm_head.weight")  # one storage, saved once
    }
    save_file(state, str(path / "model.safetensors"), metadata={"format": "pt"})
    plain_config(config).save_pretrained(path)
    for extra in (generation_config, tokenizer):
        if extra is not None:
            extra.save_pretrained(path)
    return path


def save_tiny_model(path: str | Path, **kwargs: Any) -> Path:
    """Build a tiny model (see :func:`build_tiny_model`) and ``save_pretrained`` it with its tokenizer."""
    path = Path(path)
    model, tokenizer = build_tiny_model(**kwargs)
    model.save_pretrained(path)
    tokenizer.save_pretrained(path)
    return path
