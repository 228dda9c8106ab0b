"""Peak memory of chunked `get_response_log_probs` vs the naive logits → log_softmax path.

Vocabulary 151,936 (Qwen2), B=4, T=512, log-probs and token entropy, forward only (no grad) and
forward + backward. Each measurement runs in a fresh subprocess; on CPU the peak is the growth of
the process's peak RSS over its RSS just before the call, on CUDA `max_memory_allocated`.

    python tests/bench/logprob_memory.py            # prints a table and the ratios
"""

from __future__ import annotations

import json
import resource
import subprocess
import sys

VOCAB, B, T = 151_936, 4, 512


def _current_rss_bytes() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * resource.getpagesize()


def measure(path: str, grad: bool) -> dict:
    """Run one path in this process and return its peak extra memory in bytes."""
    import torch
    from transformers import Qwen2Config, Qwen2ForCausalLM

    from lit_align.ops import get_response_log_probs, naive_response_log_probs

    torch.manual_seed(0)
    cuda = torch.cuda.is_available()
    device = "cuda" if cuda else "cpu"
    cfg = Qwen2Config(
        vocab_size=VOCAB,
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        tie_word_embeddings=True,
    )
    model = Qwen2ForCausalLM(cfg).to(device)
    ids = torch.randint(0, VOCAB, (B, T + 1), device=device)
    input_ids, labels = ids[:, :-1], ids[:, 1:]
    fn = naive_response_log_probs if path == "naive" else get_response_log_probs
    # Warm up on a short input so one-off allocations (kernels, thread pools) are not counted.
    with torch.no_grad():
        fn(model, input_ids[:, :8], labels[:, :8], return_token_entropy=True)
    if cuda:
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        base = torch.cuda.memory_allocated()
    else:
        base = _current_rss_bytes()
    with torch.set_grad_enabled(grad):
        out = fn(model, input_ids, labels, return_token_entropy=True)
        if grad:
            (out["log_probs"].sum() + out["token_entropy"].sum()).backward()
    if cuda:
        torch.cuda.synchronize()
        peak = torch.cuda.max_memory_allocated() - base
    else:
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024 - base
    return {"path": path, "grad": grad, "device": device, "peak_bytes": peak}


def main() -> None:
    if len(sys.argv) == 3:  # child process
        print(json.dumps(measure(sys.argv[1], sys.argv[2] == "grad")))
        return
    results = {}
    for grad in (False, True):
        for path in ("naive", "chunked"):
            mode = "grad" if grad else "nograd"
            proc = subprocess.run(
                [sys.executable, __file__, path, mode], capture_output=True, text=True, check=True
            )
            results[(path, grad)] = json.loads(proc.stdout.strip().splitlines()[-1])
    device = results[("naive", False)]["device"]
    print(f"get_response_log_probs peak memory, V={VOCAB}, B={B}, T={T}, device={device}")
    print(f"{'mode':<18}{'naive MiB':>12}{'chunked MiB':>14}{'ratio':>8}")
    for grad in (False, True):
        naive = results[("naive", grad)]["peak_bytes"]
        chunked = results[("chunked", grad)]["peak_bytes"]
        label = "forward+backward" if grad else "forward (no grad)"
        print(f"{label:<18}{naive / 2**20:>12.0f}{chunked / 2**20:>14.0f}{chunked / naive:>8.3f}")


if __name__ == "__main__":
    main()
