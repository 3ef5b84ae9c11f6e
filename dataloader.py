"""
The training data: batches of B x T tokens read in order from the shards fineweb.py writes.

    from dataloader import DataLoaderLite
    loader = DataLoaderLite("edu_fineweb10B", "train", B=4, T=512)
    x, y = loader.next_batch()  # (B, T) inputs and their next tokens
"""

import os

import numpy as np
import torch

from shards import ShardError, list_shards, read_shard


class DataLoaderLite:
    """Batches of B x T tokens read in order from a split's shards; x is the input, y the next token.

    Process `rank` of `world_size` takes every world_size-th batch, so processes never share tokens.
    At the end of a shard it moves to the next one, and after the last back to the first.
    """

    def __init__(self, data_root: str, split: str, B: int, T: int, rank: int = 0, world_size: int = 1,
                 vocab_size: int | None = None):
        self.data_root, self.split, self.B, self.T = data_root, split, B, T
        self.rank, self.world_size, self.vocab_size = rank, world_size, vocab_size
        if os.path.isfile(data_root):
            raise ShardError(f"data dir {data_root} is a file: give the folder of shards that fineweb.py wrote")
        if not os.path.isdir(data_root):
            raise ShardError(f"data dir {data_root} not found: make shards with `python fineweb.py`")
        paths = list_shards(data_root, split)
        if not paths:
            raise ShardError(f"no {split} shards ({split}_*.bin) in {data_root}: make them with `python fineweb.py`")
        # every shard's header and length are checked now, not when the run reaches it. A shard too small for
        # one round of batches (fineweb.py's last one holds what was left over) is left out, unless all are
        sizes = [len(read_shard(path)) for path in paths]
        kept = [(path, n) for path, n in zip(paths, sizes) if n >= self.round_tokens + 1]
        self.shards = [path for path, _ in kept]
        self.skipped = [path for path in paths if path not in self.shards]
        # rounds of batches before it wraps: a round needs round_tokens + 1 tokens (the last target)
        self.rounds = sum((n - 1) // self.round_tokens for _, n in kept)
        if not self.shards:
            raise ShardError(f"{paths[0]} holds {sizes[0]:,} tokens, fewer than one batch "
                             f"({B} x {T} x {world_size} processes + 1)")
        self.reset()

    @property
    def round_tokens(self) -> int:
        """Tokens that all processes together read per batch."""
        return self.B * self.T * self.world_size

    def _load(self, shard: int) -> None:
        self.shard = shard
        self.tokens = read_shard(self.shards[shard])  # memory-mapped: only the pages we read are loaded
        if self.vocab_size is not None and len(self.tokens):
            # an id past the embedding table would fail deep inside torch (or silently on some GPUs)
            top = int(self.tokens.max())
            if top >= self.vocab_size:
                raise ShardError(f"{self.shards[shard]} holds token id {top}, but the model's --vocab-size is "
                                 f"{self.vocab_size}: these shards were made with another tokenizer")

    def reset(self) -> None:
        self._load(0)
        self.pos = self.B * self.T * self.rank

    def next_batch(self) -> tuple[torch.Tensor, torch.Tensor]:
        B, T = self.B, self.T
        buf = torch.from_numpy(self.tokens[self.pos:self.pos + B * T + 1].astype(np.int64))
        x = buf[:-1].view(B, T)  # inputs
        y = buf[1:].view(B, T)  # targets: each input's next token
        self.pos += B * T * self.world_size
        # all processes move on together, when the next round of world_size batches would run off the end
        round_start = self.pos - B * T * self.rank
        if round_start + self.round_tokens + 1 > len(self.tokens):
            try:
                self._load((self.shard + 1) % len(self.shards))
            except ShardError as e:  # a foreign token id, found in the middle of a run: one line, not a traceback
                raise SystemExit(f"error: {e}; the checkpoints written so far are intact") from None
            self.pos = B * T * self.rank
        return x, y

    def state_dict(self) -> dict:
        # the position of the round, the same in every process: process 0's checkpoint serves them all
        return {"shard": self.shard, "pos": self.pos - self.B * self.T * self.rank}

    def load_state_dict(self, state: dict) -> None:
        if state["shard"] >= len(self.shards):
            raise ShardError(f"the checkpoint was reading {self.split} shard {state['shard']}, but "
                             f"{self.data_root} has only {len(self.shards)}: resume with the same data")
        self._load(state["shard"])
        if state["pos"] + self.round_tokens + 1 > len(self.tokens):
            raise ShardError(f"the checkpoint was reading {self.shards[state['shard']]} at token {state['pos']:,}, "
                             f"but it holds {len(self.tokens):,}: resume with the same data")
        self.pos = state["pos"] + self.B * self.T * self.rank
