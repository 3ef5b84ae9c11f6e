"""
HellaSwag: can the model tell which of four endings continues a short story? Accuracy on the validation set.

    python hellaswag.py --checkpoint log/                            # the latest checkpoint of a run
    python hellaswag.py --checkpoint log/ckpt_012207.pt --limit 500  # the first 500 examples only
    python hellaswag.py --checkpoint log/ --data hellaswag_val.jsonl # a local copy: no download
    python hellaswag.py --model gpt2                                 # OpenAI's GPT-2 124M, via transformers
    python hellaswag.py --model hf_model/                            # a Hugging Face GPT-2 folder

Each example is a context and four endings, one of them right (its `label`). Completion style scoring:
the model reads context + ending, and the cross-entropy of the ending's tokens is its loss. `acc` picks
the ending with the lowest summed loss, `acc_norm` the lowest mean loss per token, which doesn't favour
short endings. Chance is 0.25; OpenAI's GPT-2 124M gets acc 0.2859 and acc_norm 0.2955 this way.

A row longer than the model's context (never the case for GPT-2's 1,024 tokens: the longest is 149)
loses tokens from the left of its context: the model couldn't read them anyway. The script says how many.

Without --data the official validation file (10,042 examples) is downloaded once into --cache-dir and
checked. The last line printed is key=value pairs: `n=10042 acc=... acc_norm=... seconds=...`.

From a training loop:

    from hellaswag import load_examples, val_file, evaluate
    examples = load_examples(val_file())   # once; or load_examples("my_copy.jsonl")
    res = evaluate(model, examples, enc, device, dtype, rank=rank, world_size=world_size)
    res["acc_norm"]                        # the same totals on every process
"""

import argparse
import glob
import json
import math
import os
import sys
import time

import requests
import torch
import torch.distributed as dist
from tqdm import tqdm

from atomic_write import atomic_write
from checkpoint import model_from_checkpoint, open_checkpoint
from device import DTYPES, autocast, autocast_dtype, keep_freed_memory, pick_device, varying_shapes
from errors import one_line
from model import GPT, GPT2_NAMES, head_losses
from tokenizer import N_VOCAB, get_encoding

# -----------------------------------------------------------------------------
# data: the validation file, downloaded once, and a checked reader

VAL_URL = "https://raw.githubusercontent.com/rowanz/hellaswag/master/data/hellaswag_val.jsonl"
VAL_BYTES = 12_246_618  # the official file's size and line count: a download must match both
VAL_LINES = 10_042


class HellaSwagError(ValueError):
    """A data file that can't be downloaded or read; the message names the file (and the line)."""


def default_cache_dir() -> str:
    """$XDG_CACHE_HOME/gpt-seed, or ~/.cache/gpt-seed."""
    return os.path.join(os.environ.get("XDG_CACHE_HOME") or os.path.expanduser("~/.cache"), "gpt-seed")


def count_lines(path: str) -> int:
    """Lines in a file, the last one counted whether or not it ends with a newline."""
    n, last = 0, b"\n"
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            n += chunk.count(b"\n")
            last = chunk[-1:]
    return n + (last != b"\n")


def file_problem(path: str, n_bytes: int, n_lines: int) -> str | None:
    """What is wrong with a file that should have exactly n_bytes bytes and n_lines lines, or None."""
    size = os.path.getsize(path)
    if size != n_bytes:
        return f"{size:,} bytes, expected {n_bytes:,}"
    lines = count_lines(path)
    if lines != n_lines:
        return f"{lines:,} lines, expected {n_lines:,}"
    return None


def download(url: str, path: str, n_bytes: int, n_lines: int, timeout: float = 30.0, flag: str = "--data") -> None:
    """Stream url to path with a progress bar. Written to a temporary file, checked, then renamed: a file
    at path is always a complete, checked one."""
    hint = f"pass {flag} FILE with a local copy of hellaswag_val.jsonl"  # flag: the caller's own option
    remove_stale_downloads(path)
    try:
        # one temporary file per process: several ranks may download at once
        with atomic_write(path, tmp=f"{path}.{os.getpid()}.tmp") as tmp:
            with requests.get(url, stream=True, timeout=timeout) as r:
                r.raise_for_status()
                bar = tqdm(total=n_bytes, unit="B", unit_scale=True, desc="hellaswag_val.jsonl")
                with open(tmp, "wb") as f, bar:
                    for chunk in r.iter_content(chunk_size=1 << 16):
                        f.write(chunk)
                        bar.update(len(chunk))
            problem = file_problem(tmp, n_bytes, n_lines)
            if problem:  # raised inside the block: the temporary file goes, nothing is renamed
                raise HellaSwagError(f"the download of {url} is not the expected file ({problem}); {hint}")
    except requests.Timeout:
        raise HellaSwagError(f"cannot download {url}: timed out; {hint}") from None
    except requests.ConnectionError:
        raise HellaSwagError(f"cannot download {url}: no connection; {hint}") from None
    except requests.HTTPError as e:
        raise HellaSwagError(f"cannot download {url}: HTTP {e.response.status_code}; {hint}") from None
    except requests.RequestException as e:
        raise HellaSwagError(f"cannot download {url}: {type(e).__name__}; {hint}") from None
    except OSError as e:
        raise HellaSwagError(f"cannot write {path}: {e.strerror}; choose another --cache-dir or {hint}") from None


def remove_stale_downloads(path: str, age: float = 600.0) -> None:
    """Delete what killed downloads left beside path: path.<pid>.tmp files unchanged for `age` seconds (a
    download in progress writes every moment; a process id can't tell, as the cache may be shared by machines)."""
    for tmp in glob.glob(glob.escape(path) + ".*.tmp"):
        try:
            if time.time() - os.path.getmtime(tmp) > age:
                os.remove(tmp)
        except OSError:  # gone already (another process cleaned it), or not ours to remove
            pass


def val_file(cache_dir: str | None = None, url: str | None = None, n_bytes: int = VAL_BYTES,
             n_lines: int = VAL_LINES, flag: str = "--data") -> str:
    """Path of the validation file in cache_dir: the cached copy if it checks out, else downloaded."""
    cache_dir, url = cache_dir or default_cache_dir(), url or VAL_URL
    path = os.path.join(cache_dir, "hellaswag_val.jsonl")
    if os.path.isfile(path) and file_problem(path, n_bytes, n_lines) is None:
        return path  # (a file that fails the check isn't one we wrote: download it again)
    try:
        os.makedirs(cache_dir, exist_ok=True)
    except OSError as e:
        raise HellaSwagError(f"cannot create cache dir {cache_dir}: {e.strerror}") from None
    download(url, path, n_bytes, n_lines, flag=flag)
    return path


def parse_example(obj) -> dict:
    """A decoded jsonl line -> {"ctx", "endings", "label"}; ValueError saying what is wrong."""
    if not isinstance(obj, dict):
        raise ValueError(f"expected a JSON object, got {type(obj).__name__}")
    for key in ("ctx", "endings", "label"):
        if key not in obj:
            raise ValueError(f"missing field {key!r}")
    ctx, endings, label = obj["ctx"], obj["endings"], obj["label"]
    if not isinstance(ctx, str) or not ctx:
        raise ValueError("'ctx' must be a non-empty string")
    if not isinstance(endings, list) or len(endings) != 4 or not all(isinstance(e, str) for e in endings):
        raise ValueError("'endings' must be a list of four strings")
    if "" in endings:  # it would be scored as a lone space, which any model finds likely: it would win, silently
        raise ValueError(f"ending {endings.index('') + 1} is empty")
    if type(label) is not int or not 0 <= label <= 3:  # type(): True is an int too
        raise ValueError(f"'label' must be an integer 0..3, got {label!r}")
    return {"ctx": ctx, "endings": endings, "label": label}


def load_examples(path: str, limit: int | None = None) -> list[dict]:
    """The examples of a HellaSwag jsonl file (fields ctx, endings, label; others are ignored), in file
    order; limit: the first N only. A bad file raises HellaSwagError naming the file and line."""
    if limit is not None and limit <= 0:
        raise ValueError(f"limit must be positive, got {limit}")
    try:
        f = open(path, "rb")
    except FileNotFoundError:
        raise HellaSwagError(f"{path}: file not found") from None
    except OSError as e:
        raise HellaSwagError(f"{path}: cannot read it ({e.strerror})") from None
    examples = []
    with f:
        for lineno, raw in enumerate(f, start=1):
            if len(examples) == limit:
                break
            if not raw.strip():
                continue  # a blank line (a trailing newline too many) holds no example
            try:
                examples.append(parse_example(json.loads(raw.decode("utf-8"))))
            except UnicodeDecodeError:
                raise HellaSwagError(f"{path}:{lineno}: not UTF-8 text") from None
            except json.JSONDecodeError as e:
                raise HellaSwagError(f"{path}:{lineno}: not valid JSON ({e.msg})") from None
            except RecursionError:  # [[[[... thousands deep: no example either
                raise HellaSwagError(f"{path}:{lineno}: not valid JSON (nested too deeply)") from None
            except ValueError as e:
                raise HellaSwagError(f"{path}:{lineno}: {e}") from None
    if not examples:
        raise HellaSwagError(f"{path}: no examples (empty file)")
    return examples

# -----------------------------------------------------------------------------
# packing: an example -> one row of tokens, the context once and its four endings after it


def pack_example(example: dict, enc, block_size: int | None = None) -> tuple[list[int], list[int], list[int]]:
    """One row for a whole example: the context once, then its four endings one after the other.
    Returns tokens, positions (each ending starts where the context ends) and segments (0: context,
    1..4: ending i+1). With an attention mask that lets an ending read the context and itself only, this
    computes what four rows of context + ending compute, for the context's cost once instead of four
    times. When the longest row is longer than block_size, the context loses tokens from its left."""
    ctx = enc.encode_ordinary(example["ctx"])
    ends = [enc.encode_ordinary(" " + ending) for ending in example["endings"]]
    longest = max(len(end) for end in ends)
    if block_size is not None and len(ctx) + longest > block_size:
        if block_size - longest < 1:
            raise HellaSwagError(f"an ending of {longest} tokens leaves no room for context in the "
                                 f"model's {block_size}-token context")
        ctx = ctx[len(ctx) - (block_size - longest):]
    if not ctx:
        raise HellaSwagError("an example with an empty context: its ending's first token can't be scored")
    tokens, pos, seg = list(ctx), list(range(len(ctx))), [0] * len(ctx)
    for i, end in enumerate(ends):
        tokens += end
        pos += range(len(ctx), len(ctx) + len(end))
        seg += [i + 1] * len(end)
    return tokens, pos, seg


def check_lengths(examples: list[dict], enc, block_size: int) -> int:
    """Raise HellaSwagError, naming the example, where an ending leaves no room for context in the model's
    block_size tokens; return how many examples are longer than that, their context to lose tokens from its
    left. A text is encoded only if its UTF-8 bytes could make that many tokens (a token holds one or more):
    with GPT-2's 1,024-token context, none of the official set's."""
    cut = 0
    for i, example in enumerate(examples):
        ends = [" " + ending for ending in example["endings"]]
        for text in ends:
            if len(text.encode()) >= block_size and len(enc.encode_ordinary(text)) >= block_size:
                raise HellaSwagError(f"example {i + 1}: an ending of {len(enc.encode_ordinary(text))} tokens leaves "
                                     f"no room for context in the model's {block_size}-token context")
        if len(example["ctx"].encode()) + max(len(text.encode()) for text in ends) > block_size:
            longest = max(len(enc.encode_ordinary(text)) for text in ends)
            cut += len(enc.encode_ordinary(example["ctx"])) + longest > block_size
    return cut


def examples_for_training(path: str, limit: int, enc, block_size: int, master: bool = True,
                          world_size: int = 1) -> list[dict]:
    """The examples a training run evaluates (the first `limit`; 0: all), read once, each checked against the
    model's context (a note counts those whose context loses tokens to fit). Without a path, the first process
    downloads the official file while the others wait, then they read its copy. SystemExit with one line if
    they can't be had."""
    try:
        path = path or (val_file(flag="--hellaswag-data") if master else None)
        if world_size > 1:
            dist.barrier()
        path = path or val_file(flag="--hellaswag-data")  # the others: the copy the first one made
        examples = load_examples(path, limit or None)
        cut = check_lengths(examples, enc, block_size)
        if cut and master:  # scored all the same, but on less than the whole story: say so once
            print(f"note: {cut:,} of {len(examples):,} HellaSwag examples are longer than the model's "
                  f"{block_size}-token context: their contexts lose tokens from the left")
        return examples
    except HellaSwagError as e:
        raise SystemExit(f"error: {e} (or turn HellaSwag off: --hellaswag-every 0)") from None


def collate_packed(items: list[tuple[list[int], list[int], list[int]]]):
    """Packed rows -> tokens, pos, seg (B, L), right-padded (segment -1), and the attention mask (B, 1, L, L):
    query j reads key k <= j of the context or of its own segment."""
    L = max(len(tokens) for tokens, _, _ in items)
    tokens = torch.zeros((len(items), L), dtype=torch.long)
    pos = torch.zeros((len(items), L), dtype=torch.long)
    seg = torch.full((len(items), L), -1, dtype=torch.long)
    for b, (t, p, s) in enumerate(items):
        tokens[b, :len(t)], pos[b, :len(p)], seg[b, :len(s)] = torch.tensor(t), torch.tensor(p), torch.tensor(s)
    causal = torch.ones(L, L, dtype=torch.bool).tril()  # (L, L): [query, key]
    readable = (seg[:, :, None] == seg[:, None, :]) | (seg[:, None, :] == 0)  # (B, L, L) own segment or context
    return tokens, pos, seg, (causal & readable).unsqueeze(1)  # mask (B, 1, L, L)

# -----------------------------------------------------------------------------
# scoring
#
# The output head of the `seed` model (256 -> 50,304) costs more than its four blocks, so it is applied only
# at the positions that predict an ending's token, about 40% of them. bench/baseline.py's plain_hellaswag
# scores the plain way (four rows of context + ending, the logits of every position): the tests check that
# both give the same losses, and bench/hellaswag.py times one against the other.
def packed_losses(model: GPT, tokens: torch.Tensor, pos: torch.Tensor, seg: torch.Tensor,
                  mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Summed and mean cross-entropy of each ending of packed rows: (B, L) -> (B, 4), (B, 4)."""
    hidden = model.hidden_states(tokens, pos, mask)  # (B, L, C)
    B, L = tokens.shape
    # the first token of an ending is predicted at the context's last position, each later one at the
    # ending's previous token: for a scored token at j, that is j-1, or the context's end if j starts an ending
    ctx_end = (seg == 0).sum(1) - 1  # (B,)
    j = torch.arange(L, device=tokens.device).expand(B, L)  # (B, L)
    starts = (seg > 0) & (pos == ctx_end[:, None] + 1)  # (B, L) first token of an ending
    src = torch.where(starts, ctx_end[:, None].expand(B, L), j - 1)  # (B, L) position that predicts token j
    scored = seg > 0  # (B, L)
    b = torch.arange(B, device=tokens.device)[:, None].expand(B, L)[scored]  # (N,)
    h = hidden[b, src[scored]]  # (N, C)
    targets = tokens[scored]  # (N,)
    losses = head_losses(h, model.lm_head.weight, targets, model.config.logit_softcap)  # (N,), in chunks
    slot = b * 4 + seg[scored] - 1  # (N,) which of the B x 4 endings each loss belongs to
    sums = torch.zeros(B * 4, device=tokens.device).index_add_(0, slot, losses)
    counts = torch.zeros(B * 4, device=tokens.device).index_add_(0, slot, torch.ones_like(losses))
    return sums.view(B, 4), (sums / counts).view(B, 4)


@torch.inference_mode()
def score_examples(model: GPT, examples: list[dict], enc, device: str = "cpu", dtype: torch.dtype = torch.float32,
                   batch_size: int = 32, progress: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
    """Summed and mean loss of every ending: two (n, 4) float32 tensors, rows in the order of examples.

    Each example is one packed row (pack_example), batch_size of them per forward pass, sorted by length so
    that a batch holds rows of similar lengths and little padding. A row longer than the model's context
    loses context tokens from its left.
    """
    if batch_size <= 0:
        raise ValueError(f"batch_size must be positive, got {batch_size}")
    rendered = [pack_example(ex, enc, model.config.block_size) for ex in examples]
    order = sorted(range(len(rendered)), key=lambda i: -len(rendered[i][0]))  # longest first: out of memory early
    sums = torch.zeros(len(examples), 4)
    means = torch.zeros(len(examples), 4)
    device_type = torch.device(device).type
    was_training = model.training
    model.eval()
    try:
        with tqdm(total=len(examples), unit="ex", desc="hellaswag", disable=not progress) as bar:
            for start in range(0, len(order), batch_size):
                idx = order[start:start + batch_size]
                batch = collate_packed([rendered[i] for i in idx])  # tokens, pos, seg, mask
                with autocast(device_type, dtype), varying_shapes(device_type):
                    s, m = packed_losses(model, *(t.to(device) for t in batch))  # (b, 4)
                sums[idx] = s.float().cpu()
                means[idx] = m.float().cpu()
                bar.update(len(idx))
    finally:
        model.train(was_training)
        # under FSDP the root's weights stay gathered after a forward pass: gathered here, inside inference_mode,
        # training couldn't use them. Freed, the next training step gathers them again
        if hasattr(model, "reshard"):
            model.reshard()
    return sums, means


def count_correct(sums: torch.Tensor, means: torch.Tensor, labels: torch.Tensor) -> tuple[int, int]:
    """(acc's, acc_norm's) number of right answers: the ending of the lowest summed, or mean, loss."""
    return (sums.argmin(1) == labels).sum().item(), (means.argmin(1) == labels).sum().item()


def evaluate(model: GPT, examples: list[dict], enc, device: str = "cpu", dtype: torch.dtype = torch.float32,
             batch_size: int = 32, rank: int = 0, world_size: int = 1, progress: bool = False,
             equal_shares: bool = False) -> dict:
    """{"n", "acc", "acc_norm"} of model on examples. Process `rank` of `world_size` scores every
    world_size-th example; under torch.distributed the counts are summed, so every process returns the
    totals. The model is put in eval mode and back in its previous mode; no random numbers are drawn.
    equal_shares: every process makes the same forward passes, the shorter shares padded with examples
    that are scored but not counted (under FSDP each forward pass needs every process)."""
    if not examples:
        raise ValueError("no examples to evaluate")
    mine = examples[rank::world_size]
    n = len(mine)
    if equal_shares:
        mine = mine + examples[:math.ceil(len(examples) / world_size) - n]
    sums, means = score_examples(model, mine, enc, device, dtype, batch_size, progress)
    labels = torch.tensor([ex["label"] for ex in mine[:n]], dtype=torch.long)
    correct = count_correct(sums[:n], means[:n], labels)  # the padding of equal shares isn't counted
    counts = torch.tensor([n, *correct], dtype=torch.long, device=device)
    if dist.is_initialized():
        dist.all_reduce(counts, op=dist.ReduceOp.SUM)
    n, correct, correct_norm = counts.tolist()
    return {"n": n, "acc": correct / n, "acc_norm": correct_norm / n}

# -----------------------------------------------------------------------------
# OpenAI's GPT-2 through transformers (optional: only --model needs it)


def load_pretrained(name_or_dir: str) -> GPT:
    """OpenAI's GPT-2 `name_or_dir` from the Hugging Face hub (or its local cache), or a Hugging Face GPT-2
    folder, as our GPT: it gets the packed fast path like any checkpoint of ours."""
    try:
        model = GPT.from_pretrained(name_or_dir)
    except ImportError:
        raise HellaSwagError("--model needs the transformers package: pip install -r requirements-dev.txt") from None
    except (OSError, ValueError) as e:  # OSError: no network and no cached copy, or no model in the folder
        if isinstance(e, OSError) and not os.path.isdir(name_or_dir):
            raise HellaSwagError(f"cannot load {name_or_dir} from the Hugging Face hub (no network, and not in its "
                                 "local cache); evaluate a --checkpoint instead") from None
        reason = one_line(e)
        # (our ValueErrors, for a config we can't compute or weights that don't fit it, name the model already)
        if isinstance(e, OSError):
            reason = f"cannot load a model from {name_or_dir}: {reason}"
        if os.path.isfile(name_or_dir):  # a checkpoint of ours given to --model
            reason += " (a checkpoint of train_gpt.py: --checkpoint)"
        raise HellaSwagError(reason) from None
    return model

# -----------------------------------------------------------------------------
# command line


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    which = p.add_mutually_exclusive_group(required=True)
    which.add_argument("--checkpoint", help="a checkpoint file, or an out dir: its latest checkpoint")
    which.add_argument("--model", help=f"OpenAI's GPT-2 ({', '.join(GPT2_NAMES)}) from the Hugging Face hub, or a "
                                        "Hugging Face GPT-2 folder (needs transformers)")
    p.add_argument("--data", help="a HellaSwag jsonl file (default: the official validation set, downloaded once)")
    p.add_argument("--cache-dir", default=default_cache_dir(), help="where the download is kept (default: %(default)s)")
    p.add_argument("--limit", type=int, help="evaluate the first N examples only (default: all)")
    p.add_argument("--batch-size", type=int, default=32,
                   help="examples per forward pass, x 4 endings (default: %(default)s)")
    p.add_argument("--device", default="auto", help="cuda, mps, cpu or auto (default: %(default)s)")
    p.add_argument("--dtype", default="auto", choices=DTYPES,
                   help="autocast dtype; auto: bfloat16 where the device computes it natively (default: %(default)s)")
    args = p.parse_args(argv)
    for name in ("limit", "batch_size"):
        value = getattr(args, name)
        if value is not None and value <= 0:
            raise SystemExit(f"error: --{name.replace('_', '-')} must be positive, got {value}")
    if args.model is not None and args.model not in GPT2_NAMES and not os.path.isdir(args.model):
        raise SystemExit(f"error: --model must be one of {', '.join(GPT2_NAMES)} or a Hugging Face GPT-2 folder, "
                         f"got {args.model}")
    return args


def main(argv=None) -> dict:
    args = parse_args(argv)
    device = pick_device(args.device)
    dtype = autocast_dtype(device.split(":")[0], args.dtype)
    if device == "cpu":
        keep_freed_memory()  # the head's chunks reuse their memory rather than fault in fresh pages each time
    try:
        data = args.data or val_file(args.cache_dir)
        examples = load_examples(data, args.limit)
        if args.checkpoint:
            name, ckpt = open_checkpoint(args.checkpoint)  # a file, or an out dir's latest good checkpoint
            model = model_from_checkpoint(ckpt, name)
        else:
            name, model = args.model, load_pretrained(args.model)
        if model.config.vocab_size < N_VOCAB:  # GPT-2's token ids would index past its embedding
            raise HellaSwagError(f"{name} has a vocabulary of {model.config.vocab_size:,} tokens, "
                                 f"fewer than GPT-2's {N_VOCAB:,}")
        model.to(device)
        print(f"{name} | {len(examples):,} examples of {data} | device {device} | autocast {dtype} | "
              f"{torch.get_num_threads()} threads")
        enc = get_encoding()
        cut = check_lengths(examples, enc, model.config.block_size)
        if cut:  # scored all the same, but on less than the whole story: say so
            print(f"note: {cut:,} of {len(examples):,} examples are longer than the model's "
                  f"{model.config.block_size}-token context: their contexts lose tokens from the left", file=sys.stderr)
        t0 = time.perf_counter()
        res = evaluate(model, examples, enc, device, dtype, args.batch_size, progress=True)
        seconds = time.perf_counter() - t0
    except HellaSwagError as e:
        raise SystemExit(f"error: {e}") from None  # one line, no traceback, exit status 1
    res.update(seconds=round(seconds, 1), examples_per_s=round(res["n"] / seconds, 1))
    print(" ".join(f"{k}={v:.4f}" if k.startswith("acc") else f"{k}={v}" for k, v in res.items()))
    return res


if __name__ == "__main__":
    main()
