"""
The output head alone: forward and backward of model.head_loss (the head and its cross-entropy a chunk of
positions at a time) against the plain head (all the logits, then F.cross_entropy), on the same random
hidden states, weight and targets, in the same run; with --compile, both also under torch.compile.

    python bench/head.py                          # the seed model's head at 4 x 512 positions, --dtype auto
    python bench/head.py --compile --cap 30       # also compiled; the modern recipe's soft-cap

The variants run round after round, one call of each per round. The table gives the median [range] of
each one's seconds over the rounds, its speed against the plain eager head within each round, and its
loss. "matmuls at the peak" is the head's three matmuls (logits, and the gradients of h and of the
weight) at this machine's matmul peak, measured in the run: what the head would take with nothing else.
"""

import argparse
import os
import statistics
import sys

import torch
from torch.nn import functional as F

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from model import head_loss, softcap  # noqa: E402
from device import DTYPES, autocast, autocast_dtype, compiled, keep_freed_memory, pick_device  # noqa: E402
from bench.sample import spread, timed  # noqa: E402
from bench.train import matmul_peak  # noqa: E402


def plain_head_loss(h, weight, targets, cap):
    """The plain way: every logit at once, then the cross-entropy (and its backward) over all of them."""
    return F.cross_entropy(softcap(F.linear(h, weight), cap).float(), targets)


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--positions", type=int, default=2048, help="rows of hidden states (default: %(default)s)")
    p.add_argument("--n-embd", type=int, default=256, help="width of the hidden states (default: %(default)s)")
    p.add_argument("--vocab", type=int, default=50304, help="rows of the head's weight (default: %(default)s)")
    p.add_argument("--cap", type=float, default=0.0, help="logit soft-cap; 0: none (default: %(default)s)")
    p.add_argument("--compile", action="store_true", help="also time both under torch.compile")
    p.add_argument("--repeats", type=int, default=5, help="rounds (default: %(default)s)")
    p.add_argument("--device", default="auto")
    p.add_argument("--dtype", default="auto", choices=DTYPES, help="autocast dtype (default: %(default)s)")
    args = p.parse_args(argv)
    for flag in ("positions", "n_embd", "repeats"):
        if getattr(args, flag) < 1:
            p.error(f"--{flag.replace('_', '-')} must be at least 1, got {getattr(args, flag)}")
    if args.vocab < 2:
        p.error(f"--vocab must be at least 2, got {args.vocab}")
    if not (args.cap == 0 or 0 < args.cap < float("inf")):  # nan and inf too
        p.error(f"--cap must be 0 (none) or a positive number, got {args.cap}")

    device = pick_device(args.device)
    device_type = device.split(":")[0]
    if device_type == "cpu":
        keep_freed_memory()  # as training does
    dtype = autocast_dtype(device_type, args.dtype)
    dtype_name = str(dtype).replace("torch.", "")
    g = torch.Generator().manual_seed(0)
    h = torch.randn(args.positions, args.n_embd, generator=g).to(device).requires_grad_()
    weight = (torch.randn(args.vocab, args.n_embd, generator=g) * 0.02).to(device).requires_grad_()
    targets = torch.randint(0, args.vocab, (args.positions,), generator=g).to(device)

    def call(fn):
        def run():
            h.grad = weight.grad = None
            with autocast(device_type, dtype):
                loss = fn(h, weight, targets, args.cap)
            loss.backward()
            return loss.item()
        return run

    variants = {"plain": plain_head_loss, "chunked (model.head_loss)": head_loss}
    if args.compile:
        variants |= {"plain, compiled": torch.compile(plain_head_loss),  # the plain one at torch's defaults
                     "chunked, compiled": compiled(head_loss, device, dtype)}  # as train_gpt.py --compile does
    runs = {name: call(fn) for name, fn in variants.items()}
    for run in runs.values():
        run()  # warm-up: compilation, kernel choice, memory
    secs, loss = {name: [] for name in runs}, {}
    for _ in range(args.repeats):
        for name, run in runs.items():
            s, loss[name] = timed(run, device)
            secs[name].append(s)
    flops = 3 * 2 * args.positions * args.n_embd * args.vocab
    peak = matmul_peak(device, dtype)
    print(f"device {device} | torch {torch.__version__} | {torch.get_num_threads()} threads | {args.positions} "
          f"positions, {args.n_embd} -> {args.vocab:,}, cap {args.cap:g}, {dtype_name} | median [range] of "
          f"{args.repeats} rounds")
    print(f"{'head, forward + backward':<28}{'ms':>22}{'vs plain':>22}{'loss':>12}")
    for name, ss in secs.items():
        speed = spread([a / b for a, b in zip(secs["plain"], ss)], ".2f") + "x"
        print(f"{name:<28}{spread([s * 1e3 for s in ss], '.1f'):>22}{speed:>22}{loss[name]:>12.5f}")
    print(f"{'matmuls at the peak':<28}{flops / peak * 1e3:>22.1f}   ({flops / 1e9:.1f} GFLOP at "
          f"{peak / 1e9:.0f} GFLOP/s, {dtype_name})")
    return {name: statistics.median(ss) for name, ss in secs.items()} | {"loss": loss, "matmul_s": flops / peak}


if __name__ == "__main__":
    main()
