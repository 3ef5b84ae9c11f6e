"""
Text -> GPT-2 token shards that train_gpt.py reads.

    python fineweb.py                              # FineWeb-Edu sample-10BT, streamed from the Hugging Face hub
    python fineweb.py --max-tokens 400000000       # the reference run's data: 100M val + 300M train tokens
    python fineweb.py --input notes.txt more/*.jsonl --shard-size 10000000   # your own text

Every document becomes <|endoftext|> followed by its tokens; documents are concatenated and cut into
shards of --shard-size tokens. The first shard is the validation split (val_000000.bin), the rest are
training data (train_000001.bin, ...). When the whole input is smaller than one shard, the first 10% of
its tokens become the val shard and the rest one train shard.

Shard format (the same as llm.c's): a header of 256 int32 -- magic 20240520, version 1, the number of
tokens -- then the tokens as uint16. GPT-2's 50,257 ids fit in 16 bits.
"""

import argparse
import glob
import multiprocessing as mp
import os
import sys

import numpy as np
from tqdm import tqdm

from tokenizer import EOT, get_encoding

SHARD_MAGIC = 20240520
SHARD_VERSION = 1
HEADER_INTS = 256  # 1 KiB header: room to grow without moving the tokens
HEADER_BYTES = HEADER_INTS * 4

INPUT_BUILDERS = {".txt": "text", ".jsonl": "json", ".json": "json", ".parquet": "parquet"}

# -----------------------------------------------------------------------------
# shard format


class ShardError(ValueError):
    """A shard file that isn't one, or is damaged."""


class InputError(Exception):
    """Input that can't be sharded. An Exception, not SystemExit: it may be raised in the thread that
    feeds the worker pool, which passes on Exceptions only."""


def shard_path(out_dir: str, split: str, index: int) -> str:
    return os.path.join(out_dir, f"{split}_{index:06d}.bin")


def write_shard(path: str, tokens: np.ndarray) -> None:
    """Write tokens (uint16) with their header, atomically: a reader never sees a partial shard."""
    assert tokens.dtype == np.uint16
    header = np.zeros(HEADER_INTS, dtype=np.int32)
    header[:3] = (SHARD_MAGIC, SHARD_VERSION, len(tokens))
    tmp = path + ".tmp"
    with open(tmp, "wb") as f:
        f.write(header.tobytes())
        f.write(tokens.tobytes())
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)  # atomic on POSIX and Windows


def read_shard(path: str) -> np.ndarray:
    """The tokens of a shard (memory-mapped, read-only), after checking its header against its size."""
    try:
        size = os.path.getsize(path)
        header = np.fromfile(path, dtype=np.int32, count=HEADER_INTS)
    except OSError as e:
        raise ShardError(f"cannot read shard {path}: {e.strerror}") from None
    if len(header) < HEADER_INTS or header[0] != SHARD_MAGIC:
        raise ShardError(f"{path} is not a token shard (bad magic number); re-create it with fineweb.py")
    if header[1] != SHARD_VERSION:
        raise ShardError(f"{path} has shard format version {header[1]}, this code reads version {SHARD_VERSION}")
    n_tokens = int(header[2])
    if size != HEADER_BYTES + 2 * n_tokens:
        raise ShardError(f"{path} is truncated or damaged: its header says {n_tokens:,} tokens "
                         f"but it holds {(size - HEADER_BYTES) // 2:,}")
    return np.memmap(path, dtype=np.uint16, mode="r", offset=HEADER_BYTES, shape=(n_tokens,))


def list_shards(data_dir: str, split: str) -> list[str]:
    """The shards of one split ("train" or "val") in data_dir, in order."""
    return sorted(glob.glob(os.path.join(data_dir, f"{split}_*.bin")))

# -----------------------------------------------------------------------------
# documents in


def check_inputs(paths: list[str]) -> None:
    for path in paths:
        if not os.path.isfile(path):
            raise SystemExit(f"error: input file not found: {path}")
        if os.path.splitext(path)[1].lower() not in INPUT_BUILDERS:
            raise SystemExit(f"error: {path}: input files must be .txt, .jsonl or .parquet")


def iter_documents(inputs: list[str] | None):
    """Yield document texts: FineWeb-Edu from the hub, or local files, through the same `datasets` path.

    A .txt file is one document; a .jsonl line or a parquet row is one document (its `text` field).
    """
    from datasets import load_dataset  # heavy: imported only by the code that needs it
    if not inputs:
        try:
            ds = load_dataset("HuggingFaceFW/fineweb-edu", name="sample-10BT", split="train", streaming=True)
            for row in ds:
                yield row["text"]
        except (ConnectionError, OSError) as e:
            # datasets raises ConnectionError (or an OSError subclass) when the hub can't be reached
            raise InputError(f"cannot reach the Hugging Face hub for FineWeb-Edu ({type(e).__name__}); "
                             "shard local files with --input FILE [FILE ...]") from None
        return
    for path in inputs:
        builder = INPUT_BUILDERS[os.path.splitext(path)[1].lower()]
        kwargs = {"sample_by": "document"} if builder == "text" else {}
        ds = load_dataset(builder, data_files=[path], split="train", streaming=True, **kwargs)
        for i, row in enumerate(ds):
            text = row.get("text")
            if not isinstance(text, str):
                raise InputError(f"{path}: record {i + 1} has no 'text' string field")
            yield text


def tokenize(text: str) -> np.ndarray:
    """One document -> uint16 tokens, the <|endoftext|> delimiter first."""
    tokens = [EOT] + get_encoding().encode_ordinary(text)
    return np.array(tokens, dtype=np.uint16)  # every GPT-2 id is < 2**16

# -----------------------------------------------------------------------------
# shards out


class ShardWriter:
    """Collects tokens and writes a shard each time --shard-size of them are in."""

    def __init__(self, out_dir: str, shard_size: int):
        self.out_dir, self.shard_size = out_dir, shard_size
        self.buf = np.empty(shard_size, dtype=np.uint16)
        self.fill = 0  # tokens in buf
        self.index = 0  # index of the shard being filled; 0 is the val shard
        self.written: list[str] = []

    def add(self, tokens: np.ndarray) -> None:
        while len(tokens):
            n = min(len(tokens), self.shard_size - self.fill)  # a document may straddle two shards
            self.buf[self.fill:self.fill + n] = tokens[:n]
            self.fill += n
            tokens = tokens[n:]
            if self.fill == self.shard_size:
                self._write(self.buf)

    def _write(self, tokens: np.ndarray) -> None:
        path = shard_path(self.out_dir, "val" if self.index == 0 else "train", self.index)
        write_shard(path, tokens)
        self.written.append(path)
        self.index += 1
        self.fill = 0

    def close(self) -> None:
        if self.index == 0 and self.fill > 0:
            # all the input fits in one shard: keep 10% for val so there is something to train on
            n_val = max(1, self.fill // 10)
            print(f"the input has only {self.fill:,} tokens, less than one shard: "
                  f"{n_val:,} go to val, {self.fill - n_val:,} to train")
            rest = self.buf[n_val:self.fill].copy()
            self._write(self.buf[:n_val])
            self.fill = len(rest)
            self.buf[:len(rest)] = rest
        if self.fill > 0:
            self._write(self.buf[:self.fill])


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--input", nargs="+", metavar="FILE",
                   help="local .txt, .jsonl (field 'text') or .parquet files (default: FineWeb-Edu from the hub)")
    p.add_argument("--out-dir", default="edu_fineweb10B", help="where the shards go (default: %(default)s)")
    p.add_argument("--shard-size", type=int, default=100_000_000, help="tokens per shard (default: %(default)s)")
    p.add_argument("--max-tokens", type=int, default=0, help="stop after this many tokens (0: all the input)")
    p.add_argument("--workers", type=int, default=os.cpu_count() or 1,
                   help="tokenizer processes; the output is the same for any number (default: %(default)s)")
    args = p.parse_args(argv)
    for name in ("shard_size", "workers"):
        if getattr(args, name) <= 0:
            p.error(f"--{name.replace('_', '-')} must be positive")
    if args.max_tokens < 0:
        p.error("--max-tokens must be 0 (no limit) or positive")
    return args


def main(argv=None) -> list[str]:
    args = parse_args(argv)
    if args.input:
        check_inputs(args.input)
    get_encoding()  # fail early (and once) if the BPE files are missing
    os.makedirs(args.out_dir, exist_ok=True)
    writer = ShardWriter(args.out_dir, args.shard_size)
    docs = iter_documents(args.input)
    bar = tqdm(total=args.max_tokens or None, unit=" tokens", unit_scale=True, desc="tokenizing")
    pool = mp.Pool(args.workers) if args.workers > 1 else None
    total = 0
    try:
        # imap keeps the documents' order, so the shards are the same whatever the number of workers
        token_stream = pool.imap(tokenize, docs, chunksize=16) if pool else map(tokenize, docs)
        for tokens in token_stream:
            if args.max_tokens:
                tokens = tokens[:args.max_tokens - total]
            writer.add(tokens)
            total += len(tokens)
            bar.update(len(tokens))
            if args.max_tokens and total >= args.max_tokens:
                break
        writer.close()
    except InputError as e:
        raise SystemExit(f"error: {e}") from None
    finally:
        bar.close()
        if pool:
            pool.terminate()
    if total == 0:
        raise SystemExit("error: the input holds no text")
    print(f"wrote {total:,} tokens in {len(writer.written)} shards to {args.out_dir}")
    stale = sorted(set(list_shards(args.out_dir, "val") + list_shards(args.out_dir, "train")) - set(writer.written))
    if stale:
        print(f"warning: {args.out_dir} also holds {len(stale)} shards from an earlier run "
              f"(e.g. {os.path.basename(stale[0])}): remove them, or train_gpt.py will read them too",
              file=sys.stderr)
    return writer.written


if __name__ == "__main__":
    main()
