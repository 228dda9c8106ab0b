"""Start vLLM's OpenAI-compatible server on 127.0.0.1 for tests and benchmarks (CPU flags)."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from lit_align.engines import APIError, OpenAICompatibleEngine


def scrubbed_env(**extra: str) -> dict[str, str]:
    """A child process's environment: the basics and offline mode, no secrets."""
    keep = ("PATH", "HOME", "LANG", "LC_ALL", "TMPDIR", "PYTHONPATH", "VIRTUAL_ENV")
    env = {k: os.environ[k] for k in keep if k in os.environ}
    return {**env, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", **extra}


@contextmanager
def vllm_server(model: Path, name: str, log: Path, max_model_len: int = 1024) -> Iterator[str]:
    """Serve ``model`` as ``name``; yields the API root (``http://127.0.0.1:PORT/v1``)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    command = [
        *(sys.executable, "-m", "vllm.entrypoints.openai.api_server"),
        *("--model", str(model), "--served-model-name", name),
        *("--host", "127.0.0.1", "--port", str(port)),
        *("--kv-cache-memory-bytes", str(256 * 2**20), "--max-model-len", str(max_model_len)),
        "--enforce-eager",
        # vLLM 0.32 on CPU: a seeded request whose prefill is split crashes the engine.
        "--no-enable-chunked-prefill",
    ]
    with open(log, "w") as out:
        process = subprocess.Popen(
            command, stdout=out, stderr=subprocess.STDOUT, env=scrubbed_env()
        )
    url = f"http://127.0.0.1:{port}/v1"
    try:
        deadline = time.monotonic() + 180
        while True:
            try:
                with OpenAICompatibleEngine(url, name) as probe:
                    probe.check()
                break
            except APIError:
                if process.poll() is not None or time.monotonic() > deadline:
                    tail = log.read_text()[-3000:]
                    raise RuntimeError(f"vLLM server did not start:\n{tail}") from None
                time.sleep(1)
        yield url
    finally:
        process.terminate()
        try:
            process.wait(30)
        except subprocess.TimeoutExpired:
            process.kill()
