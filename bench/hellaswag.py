"""
HellaSwag speed: examples/s of hellaswag.py's scoring (each example one packed row, the output head only
where a loss is taken, a chunk of positions at a time) against the plain way (four rows of context +
ending through the plain baseline model, logits at every position), on the same examples and weights, in
the same run.

    python bench/hellaswag.py --data hellaswag_val.jsonl                  # the first 500 examples
    python bench/hellaswag.py --data hellaswag_val.jsonl --limit 0 --skip-plain --checkpoint log/ --float32-too

--dtype (default auto: bfloat16 where the CPU or GPU computes it natively) is hellaswag.py's; the plain
way runs in float32. --float32-too also scores in float32 and says on how many examples both dtypes chose
the same ending. The table gives the output head's FLOPs (2 x n_embd x vocab per scored token) and
"x head": seconds x matmul peak / head FLOPs, how far from the head alone at the peak the whole scoring
is, a figure that carries from one machine to another.
"""

import argparse
import os
import sys
import time

import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import hellaswag  # noqa: E402
from bench.baseline import plain_copy, plain_hellaswag  # noqa: E402
from train_gpt import PRESETS  # noqa: E402
from tokenizer import get_encoding  # noqa: E402
from device import autocast_dtype, keep_freed_memory, pick_device  # noqa: E402
from bench.train import bench_model, matmul_peak  # noqa: E402


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data", required=True, help="a HellaSwag jsonl file")
    p.add_argument("--limit", type=int, default=500, help="the first N examples; 0: all (default: %(default)s)")
    p.add_argument("--preset", default="seed", choices=tuple(PRESETS))
    p.add_argument("--checkpoint", help="score a checkpoint (file or out dir) instead of random weights")
    p.add_argument("--skip-plain", action="store_true", help="time hellaswag.py's scoring only")
    p.add_argument("--float32-too", action="store_true", help="also score in float32 and compare the choices")
    p.add_argument("--device", default="auto")
    p.add_argument("--dtype", default="auto", choices=("auto", "bfloat16", "float32"), help="hellaswag.py's")
    args = p.parse_args(argv)
    if args.limit < 0:
        p.error(f"--limit must be at least 0 (0: all), got {args.limit}")

    try:  # first, so that a missing or bad --data file stops before a model is built: one line
        examples = hellaswag.load_examples(args.data, args.limit or None)
    except hellaswag.HellaSwagError as e:
        raise SystemExit(f"error: {e}") from None

    device = pick_device(args.device)
    dtype = autocast_dtype(device.split(":")[0], args.dtype)
    if device == "cpu":
        keep_freed_memory()  # as hellaswag.py's main does
    model = bench_model(args.checkpoint, args.preset)
    plain = None if args.skip_plain else plain_copy(model)  # before any scoring: a model it can't compute stops here
    model.to(device)
    enc = get_encoding()
    labels = torch.tensor([ex["label"] for ex in examples])

    def run(score):
        t0 = time.perf_counter()
        sums, means = score()
        return time.perf_counter() - t0, sums, means

    name = f"hellaswag.py {str(dtype)[6:]}"
    try:  # an example too long for the model's context: one line
        rows = {name: run(lambda: hellaswag.score_examples(model, examples, enc, device, dtype))}
        if args.float32_too and dtype != torch.float32:
            rows["hellaswag.py float32"] = run(lambda: hellaswag.score_examples(model, examples, enc, device))
        if plain is not None:
            plain.to(device).eval()
            rows["plain (bench/baseline)"] = run(lambda: plain_hellaswag(lambda tokens: plain(tokens.to(device))[0],
                                                                         examples, enc, model.config.block_size))
    except hellaswag.HellaSwagError as e:
        raise SystemExit(f"error: {e}") from None
    scored = sum(len(enc.encode_ordinary(" " + e)) for ex in examples for e in ex["endings"])
    head_flops = 2 * model.config.n_embd * model.config.vocab_size * scored
    peaks = {dt: matmul_peak(device, dt) for dt in {dtype, torch.float32}}
    print(f"device {device} | torch {torch.__version__} | {torch.get_num_threads()} threads | "
          f"{'checkpoint ' + args.checkpoint if args.checkpoint else args.preset + ' preset, random weights'} | "
          f"{len(examples)} examples | output head {head_flops / 1e12:.2f} TFLOP | matmul peak " +
          ", ".join(f"{str(dt)[6:]} {peak / 1e9:,.0f} GFLOP/s" for dt, peak in peaks.items()))
    print(f"{'scoring':<24}{'seconds':>9}{'examples/s':>12}{'x head':>8}{'acc':>8}{'acc_norm':>10}")
    for name, (s, sums, means) in rows.items():
        acc = (sums.argmin(1) == labels).float().mean().item()
        acc_norm = (means.argmin(1) == labels).float().mean().item()
        peak = peaks[torch.float32 if "float32" in name or "plain" in name else dtype]
        print(f"{name:<24}{s:>9.1f}{len(examples) / s:>12.1f}{s * peak / head_flops:>8.2f}{acc:>8.4f}{acc_norm:>10.4f}")
    results = list(rows.items())
    if args.float32_too and dtype != torch.float32:
        (_, (_, s1, m1)), (_, (_, s2, m2)) = results[:2]
        same = (s1.argmin(1) == s2.argmin(1)).float().mean().item()
        same_norm = (m1.argmin(1) == m2.argmin(1)).float().mean().item()
        shift = ((m1.argmin(1) == labels).float().mean() - (m2.argmin(1) == labels).float().mean()).item()
        print(f"{str(dtype)[6:]} vs float32: same ending on {same:.2%} of examples (acc), {same_norm:.2%} (acc_norm); "
              f"acc_norm {shift * 100:+.2f} points")
    if not args.skip_plain:
        (_, (t1, s1, m1)), (_, (t2, s2, m2)) = results[0], results[-1]
        same = torch.equal(s1.argmin(1), s2.argmin(1)) and torch.equal(m1.argmin(1), m2.argmin(1))
        print(f"{results[0][0]} and plain: same choices for every example: {'yes' if same else 'NO'}; "
              f"max loss difference {max((s1 - s2).abs().max().item(), (m1 - m2).abs().max().item()):.2e}")
        print(f"speed-up {t2 / t1:.2f}x")
    return {name: len(examples) / s for name, (s, _, _) in rows.items()}


if __name__ == "__main__":
    main()
