"""
Sampling speed: tokens/s of GPT.generate with the KV cache, without it (full recompute), and of the plain
baseline's sampler (bench/baseline.py: full recompute, logits at every position), in the same run.

    python bench/sample.py                                 # seed preset, 4 samples x 256 new tokens
    python bench/sample.py --checkpoint log/ --num-samples 1 --max-new-tokens 500

Every sampler draws from the same weights with the same seed; the table says whether the KV cache drew
the very tokens of full recompute. What makes generate fast: the KV cache (a step runs one new token),
the output head at the last position only, computed as W h^T (for a few rows, ~3x faster than h W^T on
a CPU), the blocks' linears the same way (model.Linear), and inverse-CDF sampling (one random number per row instead of torch.multinomial's one per
vocabulary entry).
"""

import argparse
import os
import statistics
import sys
import time

import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from bench.baseline import PlainGPT  # noqa: E402
from model import GPT  # noqa: E402
from train_gpt import PRESETS, model_config  # noqa: E402
from tokenizer import get_encoding  # noqa: E402
from checkpoint import model_from_checkpoint, open_checkpoint  # noqa: E402
from device import pick_device  # noqa: E402


def timed(fn, repeats: int, device: str):
    """(median seconds, last result) of fn() over repeats runs."""
    times, out = [], None
    for _ in range(repeats):
        if device.startswith("cuda"):
            torch.cuda.synchronize()
        t0 = time.perf_counter()
        out = fn()
        if device.startswith("cuda"):
            torch.cuda.synchronize()
        times.append(time.perf_counter() - t0)
    return statistics.median(times), out


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--preset", default="seed", choices=tuple(PRESETS))
    p.add_argument("--checkpoint", help="sample from a checkpoint (file or out dir) instead of random weights")
    p.add_argument("--num-samples", type=int, default=4)
    p.add_argument("--max-new-tokens", type=int, default=256)
    p.add_argument("--prompt", default="Hello, I'm a language model,")
    p.add_argument("--repeats", type=int, default=3, help="runs of each sampler; the median counts (default: %(default)s)")
    p.add_argument("--device", default="auto")
    args = p.parse_args(argv)

    device = pick_device(args.device)
    torch.manual_seed(1337)
    if args.checkpoint:
        model = model_from_checkpoint(open_checkpoint(args.checkpoint)[1])
    else:
        model = GPT(model_config(PRESETS[args.preset]))
    plain = PlainGPT(model.config)
    plain.load_state_dict(model.state_dict())
    model.to(device).eval()
    plain.to(device).eval()
    enc = get_encoding()
    idx = torch.tensor([enc.encode_ordinary(args.prompt)] * args.num_samples, device=device)  # (B, T)
    n = args.num_samples * args.max_new_tokens

    def gen(m, **kw):
        return lambda: m.generate(idx, args.max_new_tokens, top_k=50,
                                  generator=torch.Generator(device=device).manual_seed(42), **kw)

    runs = {"plain (bench/baseline)": timed(gen(plain), args.repeats, device),
            "generate, recompute": timed(gen(model, use_cache=False), args.repeats, device),
            "generate, KV cache": timed(gen(model, use_cache=True), args.repeats, device)}
    same = torch.equal(runs["generate, KV cache"][1], runs["generate, recompute"][1])
    base = n / runs["plain (bench/baseline)"][0]
    print(f"device {device} | torch {torch.__version__} | {torch.get_num_threads()} threads | "
          f"{'checkpoint ' + args.checkpoint if args.checkpoint else args.preset + ' preset, random weights'} | "
          f"{args.num_samples} samples x {args.max_new_tokens} new tokens, median of {args.repeats}, float32")
    print(f"{'sampler':<24}{'seconds':>9}{'tokens/s':>10}{'vs plain':>10}")
    for name, (s, _) in runs.items():
        print(f"{name:<24}{s:>9.2f}{n / s:>10,.0f}{n / s / base:>9.1f}x")
    print(f"KV cache drew the same tokens as recompute: {'yes' if same else 'NO'} "
          "(the plain sampler draws with torch.multinomial, so other tokens)")
    return {name: n / s for name, (s, _) in runs.items()} | {"same": same}


if __name__ == "__main__":
    main()
