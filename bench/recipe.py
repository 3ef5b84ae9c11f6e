"""
The GPT-2 recipe against the modern one (train_gpt.py --recipe gpt2 / modern): the `seed` model, the same
data, the same token budget, several seeds; val loss on the same held-out tokens every few steps.

    python bench/recipe.py --corpus ../shared/data/corpus --out-dir recipe_runs           # 2 seeds, 500k tokens
    python bench/recipe.py --corpus ... --out-dir tune --seeds 0 --recipes modern --muon-lr 0.04   # tuning
    python plot_log.py recipe_runs/*/ --x tokens --out recipes.png
    python bench/recipe.py --corpus ../shared/data/corpus --out-dir corpus_pass --pass --seeds 1 --target 0.33 --fractions 0.5 0.25 \
        --hellaswag ../shared/data/hellaswag/hellaswag_val_preprocessed.jsonl      # one pass over the corpus

The corpus's heldout.jsonl becomes the val shard (its first --shard-size tokens), train_*.jsonl the
training shards. Each run is a train_gpt.py process with --out-dir <out-dir>/<recipe>_seed<N>; a run whose
log is already complete is read, not run again.

The report: each recipe's final val loss (mean and spread over the seeds), and per seed how many tokens
the modern recipe needs to reach the GPT-2 recipe's final val loss, measured two ways:
  - on the curve of the modern run with the whole budget: the first evaluation at or below it. Its
    schedule decays over the last 40% of that budget, so mid-run points are higher than a run planned
    to end there would reach: an upper bound (to within --val-every steps);
  - by modern runs planned for a fraction of the budget (--fractions, default 0.5): whether their final
    val loss reaches it. This is what "needs half the tokens" means for a user who plans a run.
"""

import argparse
import glob
import json
import os
import statistics
import subprocess
import sys
import time

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO)

import fineweb  # noqa: E402


def shard_corpus(corpus: str, out: str, shard_size: int) -> str:
    heldout = os.path.join(corpus, "heldout.jsonl")
    train = sorted(glob.glob(os.path.join(glob.escape(corpus), "train_*.jsonl")))
    if not os.path.exists(heldout) or not train:
        raise SystemExit(f"error: {corpus} needs heldout.jsonl and train_*.jsonl")
    fineweb.main(["--input", heldout, *train, "--out-dir", out, "--shard-size", str(shard_size)])
    return out


def train_tokens(shards: str) -> int:
    """Tokens in the training shards (uint16 each)."""
    return sum(os.path.getsize(f) for f in glob.glob(os.path.join(glob.escape(shards), "train_*.bin"))) // 2


def events(run_dir: str) -> list[dict]:
    path = os.path.join(run_dir, "log.jsonl")
    if not os.path.exists(path):
        return []
    with open(path) as f:
        return [json.loads(line) for line in f if line.strip()]


def val_curve(run_dir: str) -> dict[int, float]:
    """step -> val loss of a finished run (empty if it isn't one)."""
    return {e["step"]: e["val_loss"] for e in events(run_dir) if "val_loss" in e}


def report_run(name: str, run: str) -> None:
    """One line per run: its final val loss, HellaSwag, wall time and last sample, where it logged them."""
    log = events(run)  # read once
    wall_path = os.path.join(run, "wall_s")
    wall = open(wall_path).read().strip() if os.path.exists(wall_path) else "?"
    line = f"{name}: final val loss {[e['val_loss'] for e in log if 'val_loss' in e][-1]:.3f}, wall {wall} s"
    hs = [e["hellaswag_acc_norm"] for e in log if "hellaswag_acc_norm" in e]
    if hs:
        line += f", HellaSwag acc_norm {hs[0]:.4f} -> {hs[-1]:.4f}"
    samples = [e["samples"] for e in log if "samples" in e]
    if samples:
        line += f"\n  last sample: {samples[-1][0]!r}"
    print(line, flush=True)


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--corpus", required=True, help="folder with heldout.jsonl and train_*.jsonl")
    p.add_argument("--out-dir", required=True, help="the runs' logs go to <out-dir>/<recipe>_seed<N>/")
    p.add_argument("--tokens", type=int, default=500_000, help="training tokens per run (default: %(default)s)")
    p.add_argument("--batch-tokens", type=int, default=4096, help="tokens per step (default: %(default)s)")
    p.add_argument("--seeds", type=int, nargs="+", default=[1, 2], help="initialisation seeds (default: %(default)s)")
    p.add_argument("--recipes", nargs="+", default=["gpt2", "modern"], choices=("gpt2", "modern"))
    p.add_argument("--warmup-steps", type=int, help="(default: the reference run's share of the budget's steps)")
    p.add_argument("--val-every", type=int, default=8, help="steps between val losses (default: %(default)s)")
    p.add_argument("--val-steps", type=int, default=8, help="micro-batches of 4 x 512 val tokens (default: %(default)s)")
    p.add_argument("--shard-size", type=int, default=131072, help="val tokens, from heldout.jsonl (default: %(default)s)")
    p.add_argument("--muon-lr", type=float, help="override the modern recipe's --muon-lr")
    p.add_argument("--max-lr", type=float, help="override the modern recipe's --max-lr (its AdamW part)")
    p.add_argument("--fractions", type=float, nargs="*", default=[0.5],
                   help="also run the modern recipe planned for these fractions of the budget (default: %(default)s)")
    p.add_argument("--extra", default="", help="more train_gpt.py flags for the modern recipe, e.g. '--decay-frac 0.5'")
    p.add_argument("--target", type=float, default=0.5, help="the share of the tokens to meet (default: %(default)s)")
    p.add_argument("--dtype", default="float32", choices=("auto", "bfloat16", "float32"), help="(default: %(default)s)")
    p.add_argument("--compile", action="store_true", help="train_gpt.py --compile")
    p.add_argument("--hellaswag", metavar="JSONL", help="HellaSwag on this whole file at each run's first and last step")
    p.add_argument("--samples", action="store_true", help="samples at each run's first and last step")
    p.add_argument("--pass", dest="corpus_pass", action="store_true",
                   help="one pass over the training shards at the reference run's shape: --tokens all of them, "
                        "--batch-tokens 32768, --val-every 10, --val-steps 64 (131,072 tokens), --dtype auto, "
                        "--compile, --samples")
    args = p.parse_args(argv)
    for flag in ("batch_tokens", "val_every"):  # the report compares val losses
        if getattr(args, flag) < 1:
            p.error(f"--{flag.replace('_', '-')} must be at least 1, got {getattr(args, flag)}")

    shards = shard_corpus(args.corpus, os.path.join(args.out_dir, "shards"), args.shard_size)
    if args.corpus_pass:
        args.tokens, args.batch_tokens, args.val_every, args.val_steps = train_tokens(shards), 32768, 10, 64
        args.dtype, args.compile, args.samples = "auto", True, True
    steps = args.tokens // args.batch_tokens
    if steps < 1:
        p.error(f"--tokens {args.tokens:,} is less than one step of --batch-tokens {args.batch_tokens:,}")
    for f in args.fractions:  # found before any run, not after the full-budget ones
        if round(steps * f) < 1:
            p.error(f"--fractions {f:g}: {f:g} of the budget's {steps} steps leaves no step")
    warmup = args.warmup_steps or max(1, round(steps * 469 / 12207))  # the reference run's share of warmup steps
    curves = {}
    runs = [(recipe, 1.0) for recipe in args.recipes] + [("modern", f) for f in args.fractions if "modern" in args.recipes]
    for seed in args.seeds:
        for recipe, frac in runs:
            name = f"{recipe}_seed{seed}" + (f"_x{frac:g}" if frac != 1.0 else "")
            run = os.path.join(args.out_dir, name)
            n = round(steps * frac)
            cmd = [sys.executable, os.path.join(REPO, "train_gpt.py"), "--recipe", recipe, "--data-dir", shards,
                   "--out-dir", run, "--seed", str(seed), "--max-steps", str(n), "--warmup-steps", str(warmup),
                   "--batch-size", "4", "--seq-len", "512", "--total-batch-size", str(args.batch_tokens),
                   "--val-every", str(args.val_every), "--val-steps", str(args.val_steps),
                   "--hellaswag-every", str(n if args.hellaswag else 0), "--sample-every", str(n if args.samples else 0),
                   "--checkpoint-every", "0", "--dtype", args.dtype] + (["--compile"] if args.compile else [])
            cmd += ["--hellaswag-data", args.hellaswag] if args.hellaswag else []
            if recipe == "modern":
                cmd += ["--muon-lr", str(args.muon_lr)] if args.muon_lr else []
                cmd += ["--max-lr", str(args.max_lr)] if args.max_lr else []
                cmd += args.extra.split()
            if n not in val_curve(run):
                print(f"{name}: {n} steps of {args.batch_tokens} tokens -> {run}", flush=True)
                t0 = time.perf_counter()
                log = os.path.join(args.out_dir, f"{name}.out")
                with open(log, "w") as out:
                    rc = subprocess.run(cmd, stdout=out, stderr=subprocess.STDOUT).returncode
                if rc != 0:  # its own one-line error is the last line of its output
                    with open(log) as f:
                        last = (f.read().strip().splitlines() or ["?"])[-1]
                    raise SystemExit(f"error: train_gpt.py failed for {name} (exit status {rc}): {last} "
                                     f"(all of it in {log})")
                with open(os.path.join(run, "wall_s"), "w") as f:
                    f.write(f"{time.perf_counter() - t0:.0f}\n")
            curves[recipe, seed, frac] = val_curve(run)
            report_run(name, run)

    print(f"\n`seed` model, {steps} steps x {args.batch_tokens} tokens = {steps * args.batch_tokens:,} tokens per "
          f"run, val loss on {args.val_steps * 2048:,} held-out tokens every {args.val_every} steps")
    result = {}
    for recipe in args.recipes:
        finals = [curves[recipe, s, 1.0][steps] for s in args.seeds]
        spread = f" ± {(max(finals) - min(finals)) / 2:.3f}" if len(finals) > 1 else ""
        print(f"{recipe:>7}: final val loss {statistics.mean(finals):.3f}{spread}  "
              f"(seeds {', '.join(f'{s}: {v:.3f}' for s, v in zip(args.seeds, finals))})")
        result[recipe] = finals
    if set(args.recipes) == {"gpt2", "modern"}:
        ratios, planned = [], []
        for s in args.seeds:
            target = curves["gpt2", s, 1.0][steps]
            reached = next((step for step, v in sorted(curves["modern", s, 1.0].items()) if v <= target), None)
            ratios.append(reached / steps if reached is not None else float("inf"))
            line = f"seed {s}: gpt2's final {target:.3f}; "
            line += (f"the full modern run passes it at step {reached} ({reached * args.batch_tokens:,} tokens, "
                     f"{reached / steps:.2f}x)" if reached is not None else "the full modern run never reaches it")
            for f in args.fractions:
                final = curves["modern", s, f][round(steps * f)]
                planned.append((f, final <= target))
                line += f"; the modern run planned for {f:g}x ends at {final:.3f} ({'reached' if final <= target else 'not reached'})"
            print(line)
        result["ratios"] = ratios
        result["planned"] = planned
        best = min((f for f in args.fractions if all(ok for g, ok in planned if g == f)), default=None)
        print(f"tokens to reach gpt2's final, target <= {args.target:g}x: on the full modern run's curve "
              f"{max(ratios):.2f}x at most ({'met' if max(ratios) <= args.target else 'NOT met'}); "
              f"fewest of the planned runs that reach it on every seed: "
              + (f"{best:g}x" if best is not None else "none")
              + f" ({'met' if best is not None and best <= args.target else 'NOT met'})")
    return result


if __name__ == "__main__":
    main()
