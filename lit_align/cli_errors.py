"""Bad input to one line: what was wrong, where (the key, file or line) and the fix.

jsonargparse and Lightning wrap the error that matters (an unknown key, a value our constructor
refused, a missing file) in layers of "Does not validate against any of the Union subtypes" with
the whole namespace printed; :func:`one_line` walks the exception chain to the innermost cause,
keeps the outermost config key, and adds "did you mean" for a close key.
"""

from __future__ import annotations

import difflib
import inspect
import re
from collections.abc import Iterator

__all__ = ["close_keys", "one_line"]

# Keys users type for settings that live elsewhere in a lit_align config.
_ELSEWHERE = {
    "learning_rate": "model.init_args.optimizer.init_args.lr",
    "lr": "model.init_args.optimizer.init_args.lr",
    "weight_decay": "model.init_args.optimizer.init_args.weight_decay",
    "seed": "seed_everything (and data.init_args.seed)",
    "epochs": "trainer.max_epochs",
    "max_steps": "trainer.max_steps",
    "batch_size": "data.init_args.batch_size (SFT) or data.init_args.train_batch_size (GRPO)",
    "temperature": "data.init_args.sampling.temperature (rollouts) or "
    "model.init_args.val_sampling.temperature",
    "max_new_tokens": "data.init_args.sampling.max_new_tokens",
    "num_generations": "data.init_args.group_size",
    "beta": "model.init_args.loss.kl_coef",
}

# Flat keys of earlier versions, now fields of a block (tests/test_errors.py keeps these lists
# equal to LossConfig's and AdvantageConfig's fields).
_LOSS_KEYS = [
    "loss_type",
    "cliprange",
    "cliprange_high",
    "kl_coef",
    "kl_estimator",
    "aggregation",
    "normalize_constant",
    "tis_cap",
    "tis_level",
    "tis_mode",
    "clip_ratio_c",
    "log_ratio_clamp",
    "kl_clamp",
]
_ADVANTAGE_KEYS = [
    "normalize_by_std",
    "eps",
    "baseline",
    "drop_zero_variance_groups",
    "mask_truncated",
]
_MOVED = {
    **{k: f"it moved into a block: `model.init_args.loss.{k}`" for k in _LOSS_KEYS},
    **{k: f"it moved into a block: `data.init_args.advantages.{k}`" for k in _ADVANTAGE_KEYS},
    "advantage_eps": "it moved into a block: `data.init_args.advantages.eps`",
    "group_by_length": "it is called `data.init_args.length_bucket`",
    "backend": "a local engine is `engine.backend`; an endpoint (lit_align generate) is `base_url`",
}

_PARSER_KEY = re.compile(r'^Parser key "([^"]+)"')
_CLASS_PATH = re.compile(r"Problem with given class_path '([\w.]+)'")
_NOT_ACCEPTED = re.compile(r"Option '([\w.]+)' is not accepted")
_NO_ACTION = re.compile(r'No action for key "([\w.]+)"')
_UNRECOGNIZED = re.compile(r"unrecognized arguments: --([\w.-]+)")
_GROUP_OPTION = re.compile(r"(Group|Subcommand) '([\w.]+)' does not accept option '([\w.]+)'")
_NOISE = re.compile(r"^(Does not validate against|Subtypes:|Errors:|Given value|- Expected a )")


def _chain(err: BaseException) -> Iterator[BaseException]:
    seen: set[int] = set()
    current: BaseException | None = err
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        yield current
        current = current.__cause__ or current.__context__


def _accepted_keys(class_path: str) -> list[str]:
    """The init arguments a class accepts, following ``**kwargs`` up its bases."""
    import importlib

    module_name, _, name = class_path.rpartition(".")
    try:
        cls = getattr(importlib.import_module(module_name), name)
    except (ImportError, AttributeError):
        return []
    keys: list[str] = []
    for klass in inspect.getmro(cls):
        init = klass.__dict__.get("__init__")
        if init is None:
            continue
        params = inspect.signature(init).parameters.values()
        keys += [p.name for p in params if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)]
        if not any(p.kind is p.VAR_KEYWORD for p in params):
            break
    return [k for k in dict.fromkeys(keys) if k != "self"]


def close_keys(key: str, accepted: list[str]) -> str:
    """ " (did you mean `x`?)" for the accepted key closest to ``key`` (whole dotted keys first,
    then the last part), or where it lives when it is a setting of another section; "" when
    nothing is close."""
    whole = difflib.get_close_matches(key, [a for a in accepted if "." in a], n=1, cutoff=0.85)
    if "." in key and whole:
        return f" (did you mean `{whole[0]}`?)"
    leaf = key.rsplit(".", 1)[-1]
    if leaf in _MOVED and leaf not in accepted and f"`{key}`" not in _MOVED[leaf]:
        return f" ({_MOVED[leaf]})"
    in_block = [a for a in accepted if a.rsplit(".", 1)[-1] == leaf and a != key]
    if in_block:  # a block's field given flat (eval --temperature: sampling.temperature)
        return f" (did you mean `{in_block[0]}`?)"
    match = difflib.get_close_matches(leaf, [a for a in accepted if "." not in a], n=1, cutoff=0.75)
    if match:
        return f" (did you mean `{match[0]}`?)"
    elsewhere = difflib.get_close_matches(leaf, list(_ELSEWHERE), n=1, cutoff=0.75)
    if elsewhere:
        return f" (did you mean `{_ELSEWHERE[elsewhere[0]]}`?)"
    return ""


def _is_wrapper(link: BaseException) -> bool:
    text = str(link).strip()
    return bool(
        _PARSER_KEY.match(text)
        or text.startswith("Does not validate against")
        or _CLASS_PATH.match(text)
    )


def _innermost(err: BaseException) -> str:
    """The message of the first exception in the chain that is not a jsonargparse wrapper (our
    own errors keep their message even when they chain another's)."""
    links = list(_chain(err))
    first = next((link for link in links if not _is_wrapper(link)), links[-1])
    lines = [ln.strip() for ln in str(first).strip().splitlines() if ln.strip()]
    kept = [ln for ln in lines if not _NOISE.match(ln) and not _CLASS_PATH.match(ln)]
    return _PARSER_KEY.sub("", " ".join(kept)).strip(" :")


def one_line(err: BaseException) -> str:
    """One line for a configuration or input error: the key or file, the problem, the fix."""
    links = list(_chain(err))
    texts = [str(link) for link in links]
    key = next((m.group(1) for t in texts if (m := _PARSER_KEY.match(t))), None)
    class_path = next((m.group(1) for t in texts if (m := _CLASS_PATH.search(t))), None)
    message = _innermost(err)
    unknown = _NOT_ACCEPTED.search(message) or _NO_ACTION.search(message)
    if unknown:
        name = unknown.group(1)
        accepted = _accepted_keys(class_path) if class_path else []
        where = f"{key}.init_args.{name}" if key and class_path else name
        owner = f" of {class_path}" if class_path else ""
        fix = close_keys(name, accepted)
        help_hint = f"; the accepted keys: lit_align fit --{key}.help {class_path}" if key else ""
        return f"unknown key `{where}`{owner}{fix}{help_hint if not fix else ''}"
    # the accepted keys the CLI attached to a parse error (lit_align.cli / lightning_cli)
    accepted = list(getattr(err, "accepted_keys", []))
    stray = _UNRECOGNIZED.search(message)
    grouped = _GROUP_OPTION.search(message)
    if stray or grouped:
        if stray:
            name = stray.group(1)
        else:  # a group names the section; a subcommand (fit) the whole dotted key
            kind, owner, option = grouped.groups()
            name = f"{owner}.{option}" if kind == "Group" else option
        fix = close_keys(name, accepted) or "; see --help for the accepted keys"
        return f"unknown key `{name}`{fix}"
    if key == "config" and "does not exist" in message:
        return f"--config: {message}; check the path (relative to the working directory)"
    if key and key != "config" and key.split(".")[0] not in message:
        return f"{key}: {message}"
    return message
