"""
Sampling speed: tokens/s of GPT.generate with the KV cache, without it (full recompute), and of the plain
baseline's sampler (bench/baseline.py: full recompute, logits at every position), in the same run.

    python bench/sample.py                                 # seed preset, 4 samples x 256 new tokens
    python bench/sample.py --checkpoint log/ --num-samples 1 --max-new-tokens 500
    python bench/sample.py --checkpoint log/ --skip-plain --dtype bfloat16   # generate under bfloat16 autocast

Every sampler draws from the same weights with the same seed; the table says whether the KV cache drew
the very tokens of full recompute. The plain sampler runs in float32, generate in --dtype. The samplers
run round after round, one run of each per round, so that a slow spell of a shared machine hits all of
them; ratios are taken within each round, and the table gives their median and range over the rounds.

What makes generate fast: the KV cache (a step runs one new token), the output head at the last position
only, in float32 computed as W h^T (for a few rows, ~3x faster than h W^T on AMD EPYCs; in bfloat16 the
other way round, except on a CPU with AMX), the blocks' linears in float32 for a step's few rows, even
under bfloat16 autocast, as W x^T on a CPU without AMX (model.Linear), and inverse-CDF sampling (one
random number per row instead of torch.multinomial's one per vocabulary entry).
"""

import argparse
import os
import statistics
import sys
import time

import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from bench.baseline import plain_copy  # noqa: E402
from generate import prompt_tokens  # noqa: E402
from train_gpt import PRESETS  # noqa: E402
from tokenizer import get_encoding  # noqa: E402
from bench.train import bench_model  # noqa: E402
from device import DTYPES, autocast, autocast_dtype, pick_device, synchronize, varying_shapes  # noqa: E402


def timed(fn, device: str):
    """(seconds, result) of one call of fn()."""
    synchronize(device)
    t0 = time.perf_counter()
    out = fn()
    synchronize(device)
    return time.perf_counter() - t0, out


def spread(xs: list[float], fmt: str) -> str:
    """The median of xs and, for several, their range in brackets."""
    text = format(statistics.median(xs), fmt)
    return text if len(xs) == 1 else f"{text} [{min(xs):{fmt}}-{max(xs):{fmt}}]"


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--preset", default="seed", choices=tuple(PRESETS))
    p.add_argument("--checkpoint", help="sample from a checkpoint (file or out dir) instead of random weights")
    p.add_argument("--num-samples", type=int, default=4)
    p.add_argument("--max-new-tokens", type=int, default=256)
    p.add_argument("--prompt", default="Hello, I'm a language model,")
    p.add_argument("--repeats", type=int, default=3,
                   help="rounds, one run of each sampler per round (default: %(default)s)")
    p.add_argument("--skip-plain", action="store_true",
                   help="time generate only (the plain sampler takes ~40 s a run on a CPU)")
    p.add_argument("--device", default="auto")
    p.add_argument("--dtype", default="float32", choices=DTYPES,
                   help="generate's autocast dtype, as generate.py's --dtype (default: %(default)s)")
    args = p.parse_args(argv)
    for flag in ("num_samples", "max_new_tokens", "repeats"):
        if getattr(args, flag) < 1:
            p.error(f"--{flag.replace('_', '-')} must be at least 1, got {getattr(args, flag)}")

    device = pick_device(args.device)
    dtype = autocast_dtype(device.split(":")[0], args.dtype)
    model = bench_model(args.checkpoint, args.preset)
    enc = get_encoding()
    prompt = prompt_tokens(enc, args.prompt)  # as generate.py: an empty prompt starts from <|endoftext|>
    if len(prompt) + args.max_new_tokens > model.config.block_size:  # past it, every step recomputes
        raise SystemExit(f"error: the prompt's {len(prompt)} tokens and --max-new-tokens {args.max_new_tokens} pass the "
                         f"model's context of {model.config.block_size}, where the KV cache stops: it would not be measured")
    model.to(device).eval()
    plain = None if args.skip_plain else plain_copy(model).to(device).eval()
    idx = torch.tensor([prompt] * args.num_samples, dtype=torch.long, device=device)  # (B, T)
    n = args.num_samples * args.max_new_tokens

    def gen(m, dtype, new=args.max_new_tokens, **kw):
        def run():
            with autocast(device.split(":")[0], dtype), varying_shapes(device.split(":")[0]):  # as generate.py
                return m.generate(idx, new, top_k=50, generator=torch.Generator(device=device).manual_seed(42), **kw)
        return run

    plain_name = "plain (bench/baseline)"
    samplers = {plain_name: (plain, torch.float32, {}),  # name: (model, autocast dtype, generate's arguments)
                "generate, recompute": (model, dtype, {"use_cache": False}),
                "generate, KV cache": (model, dtype, {"use_cache": True})}
    if plain is None:
        del samplers[plain_name]
    for m, dt, kw in samplers.values():
        gen(m, dt, 2, **kw)()  # warm-up: allocation, kernel choice
    secs, out = {name: [] for name in samplers}, {}
    for _ in range(args.repeats):  # round after round: one run of each sampler per round
        for name, (m, dt, kw) in samplers.items():
            s, out[name] = timed(gen(m, dt, **kw), device)
            secs[name].append(s)
    same = torch.equal(out["generate, KV cache"], out["generate, recompute"])
    ratios = [r / c for r, c in zip(secs["generate, recompute"], secs["generate, KV cache"])]
    print(f"device {device} | torch {torch.__version__} | {torch.get_num_threads()} threads | "
          f"{'checkpoint ' + args.checkpoint if args.checkpoint else args.preset + ' preset, random weights'} | "
          f"{args.num_samples} samples x {args.max_new_tokens} new tokens, generate in {str(dtype)[6:]}, "
          f"median [range] of {args.repeats} rounds")
    print(f"{'sampler':<24}{'seconds':>22}{'tokens/s':>26}" + (f"{'vs plain':>22}" if plain_name in secs else ""))
    for name, ss in secs.items():
        row = f"{name:<24}{spread(ss, '.2f'):>22}  {spread([n / s for s in ss], ',.0f'):>24}"
        if plain_name in secs:  # within each round
            row += f"  {spread([a / b for a, b in zip(secs[plain_name], ss)], '.1f') + 'x':>20}"
        print(row)
    print(f"KV cache against recompute, within each round: {spread(ratios, '.1f')}x")
    if dtype == torch.float32:  # the same arithmetic either way: other tokens would be a bug
        verdict = "yes" if same else "NO"
    else:  # one row at a time and many rows at once round differently in bfloat16
        verdict = "yes" if same else f"no (expected in {str(dtype)[6:]}: the two paths round differently)"
    if not args.skip_plain:
        verdict += "; the plain sampler draws with torch.multinomial, so other tokens"
    print(f"KV cache drew the same tokens as recompute: {verdict}")
    return {name: n / statistics.median(ss) for name, ss in secs.items()} | {
        "kv_over_recompute": statistics.median(ratios), "same": same}


if __name__ == "__main__":
    main()
