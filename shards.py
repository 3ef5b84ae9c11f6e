"""
The token shards that fineweb.py writes and train_gpt.py reads (through dataloader.py).

A shard (the format of llm.c's): a header of 256 int32 -- magic 20240520, version 1, the number of tokens --
then the tokens as uint16. GPT-2's 50,257 ids fit in 16 bits. The first shard of a folder is the validation
split (val_000000.bin), the rest are training data (train_000001.bin, ...).
"""

import glob
import json
import os
import re

import numpy as np

from atomic_write import atomic_write

SHARD_MAGIC = 20240520
SHARD_VERSION = 1
HEADER_INTS = 256  # 1 KiB header: room to grow without moving the tokens
HEADER_BYTES = HEADER_INTS * 4
MAX_SHARD_TOKENS = 2**31 - 1  # the header's token count is an int32 (a shard of them is 4 GiB)
SHARD_NAME = re.compile(r"(val|train)_\d{6}\.bin")
PROGRESS_FILE = "fineweb_progress.json"  # fineweb.py's manifest in the folder: how far into its input the shards reach


class ShardError(ValueError):
    """A shard file that isn't one, or is damaged."""


def shard_path(out_dir: str, split: str, index: int) -> str:
    return os.path.join(out_dir, f"{split}_{index:06d}.bin")


def write_shard(path: str, tokens: np.ndarray) -> None:
    """Write tokens (uint16) with their header, atomically: a reader never sees a partial shard."""
    assert tokens.dtype == np.uint16
    header = np.zeros(HEADER_INTS, dtype=np.int32)
    header[:3] = (SHARD_MAGIC, SHARD_VERSION, len(tokens))
    with atomic_write(path) as tmp, open(tmp, "wb") as f:
        f.write(header.tobytes())
        f.write(tokens.tobytes())


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
    return sorted(glob.glob(os.path.join(glob.escape(data_dir), f"{split}_*.bin")))  # escape: a folder named data[1]


def unfinished(data_dir: str) -> bool:
    """Whether data_dir's shards are from a fineweb.py job that stopped before the end of its input (killed, or
    still running): its manifest says so. A folder without one (shards of another tool) counts as finished."""
    try:
        with open(os.path.join(data_dir, PROGRESS_FILE)) as f:
            return json.load(f).get("complete") is False
    except (OSError, ValueError, AttributeError):  # none, unreadable, or not a manifest: nothing to say
        return False
