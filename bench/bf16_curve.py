"""
bfloat16 autocast against float32: the same run (tiny preset, same seed, same data) in both, and how far
the loss curves are apart over the first 200 steps.

    python bench/bf16_curve.py --data-dir edu_fineweb10B
    python bench/bf16_curve.py --data-dir edu_fineweb10B --preset seed --steps 50 --device cuda

On a CPU without native bfloat16 (no AVX-512-BF16 or AMX) autocast emulates it and is several times
slower than float32; the curves are what this script is about, not the speed.
"""

import argparse
import json
import os
import statistics
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import train_gpt  # noqa: E402


def losses(out_dir: str) -> dict[int, float]:
    with open(os.path.join(out_dir, "log.jsonl")) as f:
        return {e["step"]: e["train_loss"] for e in map(json.loads, f) if "train_loss" in e}


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data-dir", required=True, help="token shards written by fineweb.py")
    p.add_argument("--preset", default="tiny", choices=("tiny", "seed", "gpt2"))
    p.add_argument("--steps", type=int, default=200)
    p.add_argument("--device", default="auto")
    p.add_argument("--json", help="also write the figures to this file")
    args = p.parse_args(argv)
    if args.steps < 1:
        p.error(f"--steps must be at least 1, got {args.steps}")
    if args.json and not os.path.isdir(os.path.dirname(os.path.abspath(args.json))):  # found now, not after the runs
        p.error(f"--json {args.json}: its folder does not exist")
    curves, seconds = {}, {}
    with tempfile.TemporaryDirectory() as tmp:
        for dtype in ("float32", "bfloat16"):
            t0 = time.perf_counter()
            train_gpt.main(["--preset", args.preset, "--data-dir", args.data_dir, "--out-dir", os.path.join(tmp, dtype),
                            "--dtype", dtype, "--device", args.device, "--max-steps", str(args.steps),
                            "--warmup-steps", str(min(args.steps, 20)), "--val-every", "0", "--sample-every", "0",
                            "--hellaswag-every", "0", "--checkpoint-every", "0"])
            seconds[dtype] = time.perf_counter() - t0
            curves[dtype] = losses(os.path.join(tmp, dtype))
    a, b = curves["float32"], curves["bfloat16"]
    diffs = [abs(a[s] - b[s]) for s in sorted(a)]
    print(f"\n{args.preset} preset, {args.steps} steps, the same seed and data")
    print(f"{'step':>6}{'float32':>10}{'bfloat16':>10}{'diff':>9}")
    for s in sorted(a):
        if s % max(1, args.steps // 10) == 0 or s == args.steps - 1:
            print(f"{s:>6}{a[s]:>10.4f}{b[s]:>10.4f}{b[s] - a[s]:>+9.4f}")
    last = sorted(a)[-len(a) // 4:]  # the last quarter: the curve once it has settled
    print(f"max |diff| {max(diffs):.4f}, mean |diff| {statistics.mean(diffs):.4f}; mean loss of the last quarter: "
          f"float32 {statistics.mean(a[s] for s in last):.4f}, bfloat16 {statistics.mean(b[s] for s in last):.4f}")
    print(f"wall: float32 {seconds['float32']:.0f} s, bfloat16 {seconds['bfloat16']:.0f} s")
    res = {"max": max(diffs), "mean": statistics.mean(diffs), "steps": args.steps,
           "last_quarter": {"float32": statistics.mean(a[s] for s in last), "bfloat16": statistics.mean(b[s] for s in last)},
           "seconds": seconds}
    if args.json:
        with open(args.json, "w") as f:
            json.dump(res, f, indent=1)
    return res


if __name__ == "__main__":
    main()
