"""
Sample text from a trained checkpoint with top-k sampling.

    python generate.py --checkpoint log/                  # the latest checkpoint of a run
    python generate.py --checkpoint log/ckpt_012207.pt --prompt "The meaning of life is" --num-samples 2

The model's configuration comes from the checkpoint. The same --seed gives the same text.
"""

import argparse

from tokenizer import get_encoding
from train_gpt import autocast_dtype, model_from_checkpoint, open_checkpoint, pick_device, sample_text


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--checkpoint", default="log", help="a checkpoint file, or an out dir: its latest (default: %(default)s)")
    p.add_argument("--prompt", default="Hello, I'm a language model,", help="text to continue (default: %(default)r)")
    p.add_argument("--num-samples", type=int, default=4, help="samples to draw (default: %(default)s)")
    p.add_argument("--max-new-tokens", type=int, default=64, help="tokens to add to the prompt (default: %(default)s)")
    p.add_argument("--top-k", type=int, default=50, help="sample from the k most likely tokens; 0: all (default: %(default)s)")
    p.add_argument("--temperature", type=float, default=1.0, help="below 1: safer, above 1: wilder (default: %(default)s)")
    p.add_argument("--seed", type=int, default=42, help="random seed; the same seed gives the same text (default: %(default)s)")
    p.add_argument("--device", default="auto", help="cuda, mps, cpu or auto (default: %(default)s)")
    p.add_argument("--dtype", default="float32", choices=("auto", "bfloat16", "float32"),
                   help="autocast dtype; auto: bfloat16 where supported (default: %(default)s)")
    args = p.parse_args(argv)
    for name in ("num_samples", "max_new_tokens"):
        if getattr(args, name) <= 0:
            p.error(f"--{name.replace('_', '-')} must be positive")
    if args.top_k < 0:
        p.error("--top-k can't be negative")
    if args.temperature <= 0:
        p.error("--temperature must be positive (for the single most likely token use --top-k 1)")
    return args


def main(argv=None) -> list[str]:
    args = parse_args(argv)
    device = pick_device(args.device)
    _, ckpt = open_checkpoint(args.checkpoint)
    model = model_from_checkpoint(ckpt).to(device)
    enc = get_encoding()
    prompt_len = len(enc.encode_ordinary(args.prompt))
    if prompt_len == 0:
        raise SystemExit("error: --prompt is empty")
    if prompt_len >= model.config.block_size:
        raise SystemExit(f"error: the prompt is {prompt_len} tokens, the model's context is {model.config.block_size}")
    samples = sample_text(model, enc, args.prompt, args.num_samples, args.max_new_tokens, top_k=args.top_k or None,
                          seed=args.seed, device=device, dtype=autocast_dtype(device.split(":")[0], args.dtype),
                          temperature=args.temperature)
    for i, s in enumerate(samples):
        print(f"--- sample {i}\n{s}")
    return samples


if __name__ == "__main__":
    main()
