"""
Sample text from a trained checkpoint, or from OpenAI's GPT-2, with top-k / top-p sampling.

    python generate.py                                    # the latest checkpoint in log/
    python generate.py --checkpoint log/ckpt_012207.pt --prompt "The meaning of life is" --num-samples 2
    python generate.py --model gpt2 --top-p 0.9 --max-new-tokens 200      # GPT-2 124M (needs transformers)

One sample is printed token by token as it is drawn; several are printed when all are done. The model's
configuration comes from the checkpoint. The same --seed gives the same text. Sampling keeps each
block's keys and values (a KV cache), so a new token costs one token's forward pass.
"""

import argparse
import codecs
import os
import sys

import torch

from checkpoint import model_from_checkpoint, open_checkpoint
from device import DTYPES, autocast, autocast_dtype, pick_device, varying_shapes
from errors import one_line
from model import GPT, GPT2_NAMES
from tokenizer import EOT, get_encoding


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    src = p.add_mutually_exclusive_group()
    src.add_argument("--checkpoint", default="log", help="a checkpoint file, or an out dir: its latest (default: %(default)s)")
    src.add_argument("--model", help=f"OpenAI's GPT-2 ({', '.join(GPT2_NAMES)}) or a Hugging Face GPT-2 folder, "
                                     "through transformers, instead of a checkpoint")
    p.add_argument("--prompt", default="Hello, I'm a language model,",
                   help="text to continue; empty: a new document (default: %(default)r)")
    p.add_argument("--num-samples", type=int, default=4, help="samples to draw (default: %(default)s)")
    p.add_argument("--max-new-tokens", type=int, default=64, help="tokens to add to the prompt (default: %(default)s)")
    p.add_argument("--top-k", type=int, default=50, help="sample from the k most likely tokens; 0: all (default: %(default)s)")
    p.add_argument("--top-p", type=float, default=1.0,
                   help="sample from the fewest tokens whose probabilities add up to p; 1: all (default: %(default)s)")
    p.add_argument("--temperature", type=float, default=1.0, help="below 1: safer, above 1: wilder (default: %(default)s)")
    p.add_argument("--seed", type=int, default=42, help="random seed; the same seed gives the same text (default: %(default)s)")
    p.add_argument("--device", default="auto", help="cuda, mps, cpu or auto (default: %(default)s)")
    p.add_argument("--dtype", default="float32", choices=DTYPES,
                   help="autocast dtype; auto: bfloat16 where supported (default: %(default)s)")
    p.add_argument("--no-stream", action="store_true", help="print a single sample when it is done, not token by token")
    args = p.parse_args(argv)
    for name in ("num_samples", "max_new_tokens"):
        if getattr(args, name) <= 0:
            p.error(f"--{name.replace('_', '-')} must be positive")
    if args.top_k < 0:
        p.error("--top-k can't be negative")
    if not 0 < args.top_p <= 1:
        p.error(f"--top-p must be in (0, 1], got {args.top_p}")
    if not 0 < args.temperature < float("inf"):  # nan too; inf makes every logit 0: candidates drawn evenly
        p.error("--temperature must be positive and finite (for the single most likely token use --top-k 1)")
    if not -2**63 <= args.seed < 2**64:  # what torch.Generator takes
        p.error(f"--seed must fit in 64 bits, got {args.seed}")
    return args


def load_model(args: argparse.Namespace) -> GPT:
    """The model of --model (through transformers) or of --checkpoint."""
    if args.model:
        try:
            return GPT.from_pretrained(args.model)
        except (ImportError, OSError, ValueError) as e:  # no transformers, no network and no cached copy, ...
            hint = " (a checkpoint of train_gpt.py: --checkpoint)" if os.path.isfile(args.model) else ""
            raise SystemExit(f"error: cannot load --model {args.model}: {one_line(e)}{hint}") from None
    name, ckpt = open_checkpoint(args.checkpoint)
    return model_from_checkpoint(ckpt, name)


def prompt_tokens(enc, prompt: str) -> list[int]:
    """The prompt's token ids. An empty prompt starts from <|endoftext|>, where every document of the training
    data starts: samples of the model's own choosing (GPT-2's unconditional samples). "<|endoftext|>" in a
    prompt is that token, as in the text the samples print, not the 7 tokens of its characters."""
    return enc.encode(prompt, allowed_special={"<|endoftext|>"}) or [EOT]


@torch.no_grad()
def sample_text(model: GPT, enc, prompt: str, num_samples: int, max_new_tokens: int, top_k: int | None,
                seed: int, device: str, dtype: torch.dtype = torch.float32, temperature: float = 1.0,
                top_p: float | None = None) -> list[str]:
    """num_samples continuations of prompt. Its own generator: the same seed gives the same text,
    and the caller's random state (a training run's) is left alone."""
    tokens = torch.tensor(prompt_tokens(enc, prompt), dtype=torch.long, device=device)
    idx = tokens.unsqueeze(0).repeat(num_samples, 1)  # (num_samples, len(prompt))
    generator = torch.Generator(device=device).manual_seed(seed)
    was_training = model.training
    model.eval()
    try:
        with autocast(device.split(":")[0], dtype), varying_shapes(device.split(":")[0]):
            out = model.generate(idx, max_new_tokens, temperature=temperature, top_k=top_k, top_p=top_p,
                                 n_vocab=enc.n_vocab, generator=generator)
    finally:
        model.train(was_training)  # a training run goes on training, whatever happened here
    start = 0 if prompt else 1  # not the <|endoftext|> an empty prompt starts from
    return [enc.decode(row[start:].tolist()) for row in out]


@torch.no_grad()
def stream_sample(model: GPT, enc, prompt: str, max_new_tokens: int, top_k: int | None, top_p: float | None,
                  seed: int, device: str, dtype: torch.dtype, temperature: float = 1.0, out=sys.stdout) -> str:
    """One sample written to `out` token by token as it is drawn; returns its whole text.
    The same tokens as sample_text with num_samples=1 and the same seed."""
    model.eval()
    idx = torch.tensor([prompt_tokens(enc, prompt)], dtype=torch.long, device=device)  # (1, T)
    generator = torch.Generator(device=device).manual_seed(seed)
    # a token may end half-way through a UTF-8 character: print the bytes once the character is whole
    utf8 = codecs.getincrementaldecoder("utf-8")(errors="replace")
    text = [prompt]
    out.write(prompt)
    out.flush()
    with autocast(device.split(":")[0], dtype), varying_shapes(device.split(":")[0]):
        for token in model.stream(idx, max_new_tokens, temperature=temperature, top_k=top_k, top_p=top_p,
                                  n_vocab=enc.n_vocab, generator=generator):
            piece = utf8.decode(enc.decode_single_token_bytes(token.item()))
            text.append(piece)
            out.write(piece)
            out.flush()
    text.append(utf8.decode(b"", final=True))
    out.write(text[-1] + "\n")
    out.flush()
    return "".join(text)


def main(argv=None) -> list[str]:
    args = parse_args(argv)
    device = pick_device(args.device)
    model = load_model(args).to(device)
    enc = get_encoding()
    if model.config.vocab_size < enc.n_vocab:  # GPT-2's token ids would index past its embedding
        raise SystemExit(f"error: the model has a vocabulary of {model.config.vocab_size:,} tokens, fewer than "
                         f"GPT-2's {enc.n_vocab:,}: its tokenizer can't be GPT-2's")
    prompt_len = len(prompt_tokens(enc, args.prompt))
    if prompt_len > model.config.block_size:
        raise SystemExit(f"error: the prompt is {prompt_len} tokens, the model's context is {model.config.block_size}")
    dtype = autocast_dtype(device.split(":")[0], args.dtype)
    top_k, top_p = args.top_k or None, (args.top_p if args.top_p < 1 else None)
    if args.num_samples == 1 and not args.no_stream:
        return [stream_sample(model, enc, args.prompt, args.max_new_tokens, top_k, top_p, args.seed, device, dtype,
                              temperature=args.temperature)]
    samples = sample_text(model, enc, args.prompt, args.num_samples, args.max_new_tokens, top_k=top_k, top_p=top_p,
                          seed=args.seed, device=device, dtype=dtype, temperature=args.temperature)
    for i, s in enumerate(samples):
        print(f"--- sample {i}\n{s}")
    return samples


if __name__ == "__main__":
    # a terminal or file that can't encode a character (cp1252, ascii) gets "?", not a UnicodeEncodeError mid-sample
    if hasattr(sys.stdout, "reconfigure"):  # (not in a notebook's %run, whose stdout is its own)
        sys.stdout.reconfigure(errors="replace")
    try:
        main()
    except KeyboardInterrupt:  # Ctrl-C: stop where the sample got to, without a traceback
        raise SystemExit(130) from None
    except BrokenPipeError:  # stdout was closed early (`| head`): stop quietly
        # point stdout at devnull, or the interpreter's final flush fails again on the way out
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        sys.exit(1)
