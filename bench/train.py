"""
Training speed: tokens/s and model FLOP utilisation of train_gpt.py's step, against this machine's
matmul peak and a plain baseline step (bench/baseline.py), all measured in the same run.

    python bench/train.py                                  # seed preset, micro-batch 4 x 512
    python bench/train.py --compile --runs 3               # and compiled, three rounds: the median and range
    python bench/train.py --preset gpt2 --batch-size 16 --seq-len 1024 --compile   # on a GPU

Each configuration runs in a fresh process (so its peak memory is its own) on the same random tokens
from the same initial weights; the first step's loss of each is printed too: a faster step that computes
something else would show there. FLOPs per token: 6 N + 12 n_layer n_embd T (N: parameters, the tied
head once, the position table not; the second term is attention's q k^T and att v).
"""

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import time

import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))  # the repository's modules

import train_gpt  # noqa: E402
from bench.baseline import PlainGPT, plain_optimizer, plain_step  # noqa: E402
from device import autocast, autocast_dtype, compiled, configure_for_training, pick_device, synchronize  # noqa: E402
from checkpoint import model_from_checkpoint, open_checkpoint  # noqa: E402
from model import GPT  # noqa: E402
from tokenizer import N_VOCAB  # noqa: E402


def bench_model(checkpoint: str | None, preset: str) -> GPT:
    """The model a benchmark measures: a checkpoint's (a file or an out dir), or the preset's with random
    weights (seeded). SystemExit, one line, for a vocabulary below GPT-2's: its ids would index past it."""
    torch.manual_seed(1337)
    if checkpoint:
        name, ckpt = open_checkpoint(checkpoint)
        model = model_from_checkpoint(ckpt, name)
    else:
        model = GPT(train_gpt.model_config(train_gpt.PRESETS[preset]))
    if model.config.vocab_size < N_VOCAB:
        raise SystemExit(f"error: the model has a vocabulary of {model.config.vocab_size:,} tokens, fewer than GPT-2's "
                         f"{N_VOCAB:,}")
    return model


def matmul_peak(device: str, dtype: torch.dtype, sizes=None, repeats: int = 3) -> float:
    """The best FLOP/s of a square matmul at a few sizes: what this device reaches at all. The sizes stop
    growing once a matmul takes over a second: a CPU that emulates bfloat16 (about 1 GFLOP/s) would
    otherwise spend minutes on 4096 x 4096."""
    best = 0.0
    if sizes is None:  # a GPU reaches its peak only from about 8192
        sizes = (1024, 2048, 4096) + ((8192,) if device.startswith("cuda") else ())
    for n in sizes:
        a = torch.randn(n, n, device=device, dtype=dtype)
        b = torch.randn(n, n, device=device, dtype=dtype)
        a @ b  # warm-up: allocation, kernel choice
        fastest = float("inf")
        for _ in range(repeats):
            synchronize(device)
            t0 = time.perf_counter()
            a @ b
            synchronize(device)
            fastest = min(fastest, time.perf_counter() - t0)
        best = max(best, 2 * n ** 3 / fastest)
        if fastest > 1.0:
            break
    return best


def peak_memory_mb(device: str) -> float:
    if device.startswith("cuda"):
        return torch.cuda.max_memory_allocated() / 2**20
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # the process's peak resident set, KiB on Linux


class RandomLoader:
    """next_batch() like DataLoaderLite's, from a fixed list of random micro-batches."""

    def __init__(self, batches):
        self.batches, self.i = batches, 0

    def next_batch(self):
        x, y = self.batches[self.i % len(self.batches)]
        self.i += 1
        return x, y


def worker(args) -> dict:
    """Time one configuration in this process; returns its figures."""
    device = pick_device(args.device)
    cfg = train_gpt.preset_config(args.preset)
    cfg.batch_size, cfg.seq_len = args.batch_size, args.seq_len
    cfg.total_batch_size = args.batch_size * args.seq_len * args.accum
    cfg.warmup_steps, cfg.max_steps = 10, 1000
    torch.manual_seed(1337)
    model = GPT(train_gpt.model_config(cfg))
    g = torch.Generator().manual_seed(0)
    batches = [(torch.randint(0, 50257, (cfg.batch_size, cfg.seq_len), generator=g),
                torch.randint(0, 50257, (cfg.batch_size, cfg.seq_len), generator=g)) for _ in range(args.accum)]
    batches_dev = [(x.to(device), y.to(device)) for x, y in batches]

    if args.worker.startswith("plain"):
        plain = PlainGPT(model.config)
        plain.load_state_dict(model.state_dict())  # the same weights
        plain.to(device)
        opt = plain_optimizer(plain)
        best = args.worker == "plain-best"  # its best: bfloat16 autocast (where native) and torch.compile
        dtype = autocast_dtype(device.split(":")[0], args.dtype) if best else torch.float32
        fwd = torch.compile(plain) if best else plain

        def run(step):
            with autocast(device.split(":")[0], dtype):
                return plain_step(fwd, opt, batches_dev)
    else:
        model.to(device)
        device_type = device.split(":")[0]
        configure_for_training(device_type)  # as train_gpt.main does: TF32 on CUDA, the CPU's malloc settings
        dtype = autocast_dtype(device_type, args.dtype)
        opt = train_gpt.configure_optimizer(model, cfg, device_type)
        fwd = compiled(model, device, dtype) if args.worker == "compiled" else model  # as train_gpt builds it
        loader = RandomLoader(batches)

        def run(step):
            return train_gpt.train_step(model=fwd, optimizer=opt, loader=loader, grad_accum=args.accum, step=step,
                                        cfg=cfg, device=device, dtype=dtype)["train_loss"]

    times, first_loss = [], None
    for step in range(args.warmup + args.steps):
        synchronize(device)
        t0 = time.perf_counter()
        loss = run(step)
        synchronize(device)
        times.append(time.perf_counter() - t0)
        first_loss = loss if first_loss is None else first_loss
    step_s = statistics.median(times[args.warmup:])
    return {"config": args.worker, "dtype": str(dtype).replace("torch.", ""), "step_s": step_s,
            "tok_s": cfg.total_batch_size / step_s, "first_loss": first_loss, "first_step_s": times[0],
            "peak_mb": peak_memory_mb(device), "n_params": model.num_params(non_embedding=True),
            "n_layer": cfg.n_layer, "n_embd": cfg.n_embd}


def main(argv=None) -> list[dict]:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--preset", default="seed", choices=("seed", "gpt2", "tiny"), help="a preset of train_gpt.py")
    p.add_argument("--batch-size", type=int, default=4, help="micro-batch (default: %(default)s)")
    p.add_argument("--seq-len", type=int, default=512, help="(default: %(default)s)")
    p.add_argument("--accum", type=int, default=2, help="micro-steps per optimizer step (default: %(default)s)")
    p.add_argument("--steps", type=int, default=3, help="timed steps per configuration, after the warm-up (default: %(default)s)")
    p.add_argument("--warmup", type=int, default=1, help="untimed first steps (default: %(default)s)")
    p.add_argument("--device", default="auto")
    p.add_argument("--dtype", default="auto", choices=("auto", "bfloat16", "float32"), help="for this repository's step")
    p.add_argument("--compile", action="store_true",
                   help="also time the step under torch.compile, and the plain baseline's best: compiled, with autocast")
    p.add_argument("--runs", type=int, default=1, help="runs of every configuration, one round after another (default: %(default)s)")
    p.add_argument("--configs", help="comma-separated, of plain, plain-best, ours, compiled (default: plain and ours, "
                   "and with --compile the other two)")
    p.add_argument("--json", help="also write the results to this file")
    p.add_argument("--worker", help=argparse.SUPPRESS)  # internal: time one configuration, print JSON
    args = p.parse_args(argv)
    for flag in ("batch_size", "seq_len", "accum", "steps", "runs"):
        if getattr(args, flag) < 1:
            p.error(f"--{flag.replace('_', '-')} must be at least 1, got {getattr(args, flag)}")
    if args.warmup < 0:
        p.error(f"--warmup must be at least 0, got {args.warmup}")
    block_size = train_gpt.preset_config(args.preset).block_size
    if args.seq_len > block_size:
        p.error(f"--seq-len {args.seq_len} is longer than the {args.preset} preset's context ({block_size})")
    if args.worker:
        print(json.dumps(worker(args)))
        return []
    if args.json and not os.path.isdir(os.path.dirname(os.path.abspath(args.json))):  # found now, not after the runs
        p.error(f"--json {args.json}: its folder does not exist")
    configs = ["plain"] + (["plain-best"] if args.compile else []) + ["ours"] + (["compiled"] if args.compile else [])
    if args.configs:
        configs = args.configs.split(",")
        if not set(configs) <= {"plain", "plain-best", "ours", "compiled"}:  # before the matmul peak is measured
            p.error(f"--configs: unknown configuration in {args.configs!r}")

    device = pick_device(args.device)
    dtype = autocast_dtype(device.split(":")[0], args.dtype)
    peak32 = matmul_peak(device, torch.float32)
    peak = peak32 if dtype == torch.float32 else matmul_peak(device, dtype)
    print(f"device {device} | torch {torch.__version__} | {torch.get_num_threads()} threads | "
          f"matmul peak float32 {peak32 / 1e9:,.0f} GFLOP/s" +
          (f", {str(dtype)[6:]} {peak / 1e9:,.0f} GFLOP/s" if dtype != torch.float32 else ""))

    passed = ("preset", "batch_size", "seq_len", "accum", "steps", "warmup", "device", "dtype")
    flags = [f"--{k.replace('_', '-')}={v}" for k, v in vars(args).items() if k in passed]
    runs = {c: [] for c in configs}
    for _ in range(args.runs):  # round after round, so that a slow spell of a shared machine hits every configuration
        for c in configs:
            out = subprocess.run([sys.executable, os.path.abspath(__file__), *flags, "--worker", c],
                                 capture_output=True, text=True)
            if out.returncode != 0:
                raise SystemExit(f"error: the {c} configuration failed:\n{out.stderr[-2000:]}")
            runs[c].append(json.loads(out.stdout.strip().splitlines()[-1]))

    results = [sorted(rs, key=lambda r: r["tok_s"])[(len(rs) - 1) // 2] for rs in runs.values()]  # the median run
    for r in results:
        r["flops_per_token"] = 6 * r["n_params"] + 12 * r["n_layer"] * r["n_embd"] * args.seq_len
        r["peak_flops"] = peak32 if r["dtype"] == "float32" else peak
        r["mfu"] = r["tok_s"] * r["flops_per_token"] / r["peak_flops"]
    base = next((r for r in results if r["config"] == "plain"), results[0])  # the plain step, where it ran
    print(f"\n{args.preset} preset, micro-batch {args.batch_size} x {args.seq_len}, {args.accum} micro-steps per step, "
          f"median of {args.steps} steps after {args.warmup} warm-up" +
          (f"; the median run of {args.runs} (of an even number, the slower middle one), their range in brackets"
           if args.runs > 1 else ""))
    print(f"{'step':<26}{'dtype':>9}{'tokens/s':>10}{'vs ' + base['config']:>15}{'MFU':>7}{'peak MB':>9}{'first loss':>12}")
    for r in results:
        name = {"plain": "plain (bench/baseline)", "plain-best": "plain, compile + autocast", "ours": "train_gpt",
                "compiled": "train_gpt --compile"}[r["config"]]
        spread = [x["tok_s"] for x in runs[r["config"]]]
        print(f"{name:<26}{r['dtype']:>9}{r['tok_s']:>10,.0f}{r['tok_s'] / base['tok_s']:>14.2f}x{r['mfu']:>7.1%}"
              f"{r['peak_mb']:>9,.0f}{r['first_loss']:>12.5f}" +
              (f"  [{min(spread):,.0f}-{max(spread):,.0f}]" if args.runs > 1 else ""))
    print(f"FLOPs per token {results[0]['flops_per_token'] / 1e6:.1f} M; MFU against the matmul peak of the step's dtype")
    if {"plain-best", "compiled"} <= set(configs):
        best = {r["config"]: r["tok_s"] for r in results}
        print(f"train_gpt's best, eager or compiled, against the plain baseline's best (compiled, {dtype}): "
              f"{max(best.get('ours', 0), best['compiled']) / best['plain-best']:.2f}x")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(results, f, indent=1)
    return results


if __name__ == "__main__":
    main()
