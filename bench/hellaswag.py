"""
HellaSwag speed: examples/s of hellaswag.py's scoring (each example one packed row, the output head only
where a loss is taken) against the plain way (four rows of context + ending through the plain baseline
model, logits at every position), on the same examples and weights, in the same run.

    python bench/hellaswag.py --data hellaswag_val.jsonl                  # the first 500 examples
    python bench/hellaswag.py --data hellaswag_val.jsonl --limit 0 --skip-plain --checkpoint log/   # all

The table says whether both chose the same ending for every example.
"""

import argparse
import os
import sys
import time

import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import hellaswag  # noqa: E402
from bench.baseline import PlainGPT, plain_hellaswag  # noqa: E402
from model import GPT  # noqa: E402
from train_gpt import PRESETS, model_config  # noqa: E402
from tokenizer import get_encoding  # noqa: E402
from checkpoint import model_from_checkpoint, open_checkpoint  # noqa: E402
from device import pick_device  # noqa: E402


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data", required=True, help="a HellaSwag jsonl file")
    p.add_argument("--limit", type=int, default=500, help="the first N examples; 0: all (default: %(default)s)")
    p.add_argument("--preset", default="seed", choices=tuple(PRESETS))
    p.add_argument("--checkpoint", help="score a checkpoint (file or out dir) instead of random weights")
    p.add_argument("--skip-plain", action="store_true", help="time hellaswag.py's scoring only")
    p.add_argument("--device", default="auto")
    args = p.parse_args(argv)

    device = pick_device(args.device)
    torch.manual_seed(1337)
    model = (model_from_checkpoint(open_checkpoint(args.checkpoint)[1]) if args.checkpoint
             else GPT(model_config(PRESETS[args.preset])))
    model.to(device)
    enc = get_encoding()
    examples = hellaswag.load_examples(args.data, args.limit or None)
    labels = torch.tensor([ex["label"] for ex in examples])

    def run(score):
        t0 = time.perf_counter()
        sums, means = score()
        return time.perf_counter() - t0, sums, means

    rows = {"hellaswag.py": run(lambda: hellaswag.score_examples(model, examples, enc, device))}
    if not args.skip_plain:
        plain = PlainGPT(model.config)
        plain.load_state_dict(model.state_dict())
        plain.to(device).eval()
        rows["plain (bench/baseline)"] = run(lambda: plain_hellaswag(lambda tokens: plain(tokens.to(device))[0],
                                                                     examples, enc, model.config.block_size))
    print(f"device {device} | torch {torch.__version__} | {torch.get_num_threads()} threads | "
          f"{'checkpoint ' + args.checkpoint if args.checkpoint else args.preset + ' preset, random weights'} | "
          f"{len(examples)} examples, float32")
    print(f"{'scoring':<24}{'seconds':>9}{'examples/s':>12}{'acc':>8}{'acc_norm':>10}")
    for name, (s, sums, means) in rows.items():
        acc = (sums.argmin(1) == labels).float().mean().item()
        acc_norm = (means.argmin(1) == labels).float().mean().item()
        print(f"{name:<24}{s:>9.1f}{len(examples) / s:>12.1f}{acc:>8.4f}{acc_norm:>10.4f}")
    if not args.skip_plain:
        (_, s1, m1), (_, s2, m2) = rows.values()
        same = torch.equal(s1.argmin(1), s2.argmin(1)) and torch.equal(m1.argmin(1), m2.argmin(1))
        print(f"same choices for every example: {'yes' if same else 'NO'}; "
              f"max loss difference {max((s1 - s2).abs().max().item(), (m1 - m2).abs().max().item()):.2e}")
        print(f"speed-up {rows['plain (bench/baseline)'][0] / rows['hellaswag.py'][0]:.2f}x")
    return {name: len(examples) / s for name, (s, _, _) in rows.items()}


if __name__ == "__main__":
    main()
