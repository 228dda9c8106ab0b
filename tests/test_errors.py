"""Bad input, the way a newcomer types it: each case is one line on stderr (the key or file, the
problem, the fix), a consistent exit code, and no run directory left behind."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from lit_align.cli import main
from lit_align.cli_errors import close_keys, one_line

ROOT = Path(__file__).resolve().parents[1]
SFT = str(ROOT / "configs/demo/sft.yaml")
GRPO = str(ROOT / "configs/demo/grpo.yaml")


def _checkpoint(folder: Path) -> Path:
    path = folder / "good.ckpt"
    torch.save({"state_dict": {"w": torch.zeros(4096)}, "epoch": 0}, path)
    return path


def _truncated(folder: Path) -> str:
    data = _checkpoint(folder).read_bytes()
    (folder / "truncated.ckpt").write_bytes(data[: len(data) // 2])
    return str(folder / "truncated.ckpt")


def _random_bytes(folder: Path) -> str:
    (folder / "random.ckpt").write_bytes(bytes(range(256)) * 64)
    return str(folder / "random.ckpt")


def _bad_json(folder: Path) -> str:
    rows = [{"question": "1+1", "answer": "#### 2"}] * 2
    # line 3 lacks its closing brace: the error is at its end (column 39), not "line 4 column 1"
    lines = [json.dumps(r) for r in rows] + ['{"question": "2+2", "answer": "#### 4"']
    (folder / "bad.jsonl").write_text("\n".join(lines) + "\n")
    return str(folder / "bad.jsonl")


def _yaml_typo(folder: Path) -> str:
    (folder / "typo.yaml").write_text("model:\n  init_args:\n    lerning_rate: 0.1\n")
    return str(folder / "typo.yaml")


def _trainer_typo(folder: Path) -> str:
    (folder / "trainer.yaml").write_text("trainer:\n  max_epohcs: 3\n")
    return str(folder / "trainer.yaml")


# (case, argv given a scratch folder, exit code, patterns the one line must hold)
CASES = [
    (
        "config file missing",
        lambda d: ["fit", "--config", "configs/nope.yaml"],
        2,
        [r"--config", r"nope\.yaml", r"does not exist"],
    ),
    (
        "typo'd key on the command line",
        lambda d: ["fit", "--config", SFT, "--model.init_args.lerning_rate", "3"],
        2,
        [r"unknown key `model\.init_args\.lerning_rate`", r"optimizer\.init_args\.lr"],
    ),
    (
        "typo'd key in a config file",
        lambda d: ["fit", "--config", SFT, "--config", _yaml_typo(d)],
        2,
        [r"lerning_rate", r"did you mean `model\.init_args\.optimizer\.init_args\.lr`"],
    ),
    (
        "typo'd data key, close to a real one",
        lambda d: ["fit", "--config", GRPO, "--data.init_args.grop_size", "8"],
        2,
        [r"unknown key `data\.init_args\.grop_size`", r"did you mean `group_size`\?"],
    ),
    (
        "typo'd trainer flag",
        lambda d: ["fit", "--config", SFT, "--trainer.max_epohcs", "3"],
        2,
        [r"unknown key `trainer\.max_epohcs` \(did you mean `trainer\.max_epochs`\?\)"],
    ),
    (
        "typo'd trainer key in a config file",
        lambda d: ["fit", "--config", SFT, "--config", _trainer_typo(d)],
        2,
        [r"unknown key `trainer\.max_epohcs` \(did you mean `trainer\.max_epochs`\?\)"],
    ),
    (
        "typo'd flag of lit_align eval",
        lambda d: ["eval", "--modle", "tiny", "--data", "synthetic:addition"],
        2,
        [r"unknown key `modle` \(did you mean `model`\?\)"],
    ),
    (
        "a GRPO loss option given flat, as before the loss block",
        lambda d: ["fit", "--config", GRPO, "--model.init_args.kl_coef", "0.1"],
        2,
        [
            r"unknown key `model\.init_args\.kl_coef`.* \(it moved into a block: `model\.init_args\.loss\.kl_coef`\)"
        ],
    ),
    (
        "a sampling flag of lit_align eval given flat",
        lambda d: [
            "eval",
            "--model",
            "tiny",
            "--data",
            "synthetic:addition",
            "--temperature",
            "0.5",
        ],
        2,
        [r"unknown key `temperature` \(did you mean `sampling\.temperature`\?\)"],
    ),
    (
        "a wrong value in the loss block",
        lambda d: ["fit", "--config", GRPO, "--model.init_args.loss.cliprange", "-1"],
        1,
        [r"loss\.cliprange must be >= 0 \(e\.g\. 0\.2\), got -1"],
    ),
    (
        "negative group size",
        lambda d: ["fit", "--config", GRPO, "--data.init_args.group_size", "-8"],
        1,
        [r"group_size must be >= 1, got -8"],
    ),
    (
        "zero micro-batch",
        lambda d: ["fit", "--config", SFT, "--data.init_args.micro_batch_size", "0"],
        1,
        [r"micro_batch_size must be >= 1, got 0"],
    ),
    (
        "truncated checkpoint",
        lambda d: ["fit", "--config", SFT, "--ckpt_path", _truncated(d)],
        1,
        [r"truncated\.ckpt", r"not a checkpoint", r"--ckpt_path last"],
    ),
    (
        "checkpoint of random bytes",
        lambda d: ["fit", "--config", SFT, "--ckpt_path", _random_bytes(d)],
        1,
        [r"random\.ckpt", r"not a checkpoint"],
    ),
    (
        "checkpoint path missing",
        lambda d: ["fit", "--config", SFT, "--ckpt_path", str(d / "nope.ckpt")],
        1,
        [r"nope\.ckpt: does not exist"],
    ),
    (
        "eval of a model directory that does not exist",
        lambda d: ["eval", "--model", "runs/does_not_exist/hf_model", "--data", "x.jsonl"],
        1,
        [r"runs/does_not_exist/hf_model: no such directory"],
    ),
    (
        "invalid JSON on line 3",
        lambda d: ["fit", "--config", SFT, "--data.init_args.train_source", _bad_json(d)],
        1,
        [r"bad\.jsonl:3: invalid JSON \(Expecting ',' delimiter at column 39\)"],
    ),
]


def _run(argv: list[str], cwd: Path) -> subprocess.CompletedProcess:
    """The console script, as a user runs it (a fresh process, no debug variable)."""
    env = {k: v for k, v in os.environ.items() if k != "LIT_ALIGN_DEBUG"}
    command = [sys.executable, "-m", "lit_align.cli", *argv]
    return subprocess.run(command, capture_output=True, text=True, cwd=cwd, env=env, timeout=300)


@pytest.mark.parametrize(
    ("argv", "code", "patterns"), [c[1:] for c in CASES], ids=[c[0] for c in CASES]
)
def test_bad_input_is_one_line_with_the_fix_and_leaves_nothing(argv, code, patterns, tmp_path):
    scratch = tmp_path / "inputs"
    scratch.mkdir()
    done = _run(argv(scratch), tmp_path)
    err = done.stderr + done.stdout
    assert done.returncode == code, err
    errors = [line for line in err.splitlines() if line.startswith("lit_align: error:")]
    assert len(errors) == 1, err
    for pattern in patterns:
        assert re.search(pattern, errors[0]), (pattern, errors[0])
    for noise in ("Traceback", "Union subtypes", "Namespace(", "usage:", "weights_only=False"):
        assert noise not in err, err
    banner = ("Seed set to", "GPU available", "TPU available", "💡 Tip")  # Lightning's start-up
    said = [ln for ln in done.stderr.strip().splitlines() if not ln.startswith(banner)]
    assert len(said) <= 2, done.stderr  # the line and the debug hint
    assert not (tmp_path / "runs").exists()  # validated before any run directory


def test_the_warm_start_runs_only_after_the_main_config_validated(tmp_path):
    done = _run(["fit", "--config", GRPO, "--data.init_args.rollout_batch_size", "1000"], tmp_path)
    assert done.returncode == 1 and "must be divisible" in done.stderr, done.stderr
    assert "warm start" not in done.stdout
    assert not (tmp_path / "runs").exists()  # no warm start, no demo_grpo_init


def test_debug_keeps_the_traceback_and_never_advises_unsafe_loading(tmp_path, monkeypatch):
    monkeypatch.setenv("LIT_ALIGN_DEBUG", "1")
    with pytest.raises(ValueError, match="not a checkpoint") as raised:
        main(["fit", "--config", SFT, "--ckpt_path", _random_bytes(tmp_path)])
    assert raised.value.__cause__ is None and "weights_only=False" not in str(raised.value)


def test_a_checkpoint_that_loads_passes_the_check(tmp_path):
    from lit_align.checkpoints import check_checkpoint

    check_checkpoint(_checkpoint(tmp_path))  # no error
    torch.save({"w": torch.zeros(2)}, tmp_path / "weights.pt")
    with pytest.raises(ValueError, match="not a Lightning checkpoint"):
        check_checkpoint(tmp_path / "weights.pt")


def test_close_keys_and_the_innermost_message():
    assert close_keys("grop_size", ["group_size", "seed"]) == " (did you mean `group_size`?)"
    assert "optimizer.init_args.lr" in close_keys("lerning_rate", ["dtype"])
    assert close_keys("zzz", ["group_size"]) == ""
    try:
        try:
            raise ValueError("micro_batch_size must be >= 1, got 0")
        except ValueError as inner:
            raise ValueError(
                "Does not validate against any of the Union subtypes\nErrors:"
            ) from inner
    except ValueError as outer:
        assert one_line(outer) == "micro_batch_size must be >= 1, got 0"


def test_the_moved_key_table_matches_the_blocks():
    from dataclasses import fields

    from lit_align import cli_errors
    from lit_align.losses import LossConfig
    from lit_align.rounds import AdvantageConfig

    assert set(cli_errors._LOSS_KEYS) == {f.name for f in fields(LossConfig)}
    assert set(cli_errors._ADVANTAGE_KEYS) == {f.name for f in fields(AdvantageConfig)}
