"""
Train a GPT-2 style model on token shards written by fineweb.py.

    python train_gpt.py                                   # the reference run: `seed` preset, ~16M params
    python train_gpt.py --preset tiny --max-steps 100     # a quick run on a laptop CPU
    python train_gpt.py --resume                          # continue the latest checkpoint in --out-dir
    python train_gpt.py --recipe modern                   # rotary, QK-norm, ReLU², Muon, WSD (README: "Recipes")
    torchrun --standalone --nproc_per_node=8 train_gpt.py --preset gpt2          # 8 GPUs (README: "Many devices")
    torchrun --standalone --nproc_per_node=8 train_gpt.py --preset gpt2 --fsdp   # the same, weights sharded

Every field of TrainConfig is a flag (--max-steps, --batch-size, ...); --preset picks a whole
configuration, --recipe how it is trained, and the other flags override both. Metrics go to <out-dir>/log.jsonl, one JSON object per
event, and checkpoints to <out-dir>/ckpt_<step>.pt.
"""

import argparse
import ctypes
import glob
import json
import math
import os
import platform
import re
import signal
import sys
import threading
import time
import zipfile
import zlib
from contextlib import nullcontext
from dataclasses import asdict, dataclass, field, fields, replace

import numpy as np
import torch
import torch.distributed as dist
from torch.nn.parallel import DistributedDataParallel as DDP

import hellaswag
from fineweb import ShardError, list_shards, read_shard
from model import GPT, PRESETS, GPTConfig
from optim import MuonAdamW
from tokenizer import get_encoding

# -----------------------------------------------------------------------------
# config


def _f(default, help: str, **kw):
    """A config field with its --help text."""
    return field(default=default, metadata={"help": help, **kw})


@dataclass
class TrainConfig:
    preset: str = _f("seed", "a whole configuration; other flags override it", choices=("seed", "gpt2", "tiny"))
    recipe: str = _f("gpt2", "how to train it: gpt2 (the reference run) or modern (rotary positions, QK-norm, ReLU², "
                             "soft-capped logits, zero-initialised projections, Muon, warmup-stable-decay); it sets "
                             "the flags below that it changes, and other flags override it", choices=("gpt2", "modern"))
    # model (see model.GPTConfig)
    n_layer: int = _f(4, "transformer blocks")
    n_head: int = _f(8, "attention heads per block")
    n_embd: int = _f(256, "width of the residual stream")
    block_size: int = _f(1024, "context length of the model")
    vocab_size: int = _f(50304, "vocabulary size (GPT-2's 50,257 padded to a multiple of 64)")
    rope: bool = _f(False, "rotary position embeddings instead of a learned position table")
    qk_norm: bool = _f(False, "RMS-normalise queries and keys before attention")
    mlp: str = _f("gelu", "the MLP's activation: gelu or relu2 (ReLU squared)", choices=("gelu", "relu2"))
    logit_softcap: float = _f(0.0, "bound the logits smoothly: c * tanh(logits / c) (0: off)")
    zero_init_proj: bool = _f(False, "start the projections into the residual stream at zero")
    # data and batch
    data_dir: str = _f("edu_fineweb10B", "folder of token shards written by fineweb.py")
    batch_size: int = _f(4, "micro-batch: sequences per forward pass, per process")
    seq_len: int = _f(512, "tokens per sequence (at most --block-size)")
    total_batch_size: int = _f(32768, "tokens per optimizer step, reached by gradient accumulation")
    # optimization
    max_steps: int = _f(12207, "optimizer steps")
    warmup_steps: int = _f(469, "steps of linear learning-rate warmup")
    optimizer: str = _f("adamw", "adamw, or muon: Muon for the blocks' weight matrices (at --muon-lr) and AdamW "
                                 "(at --max-lr) for the embedding, biases and gains", choices=("adamw", "muon"))
    max_lr: float = _f(6e-4, "peak learning rate, reached at the end of warmup")
    min_lr: float = _f(6e-5, "learning rate at the last step, after the decay")
    muon_lr: float = _f(0.02, "peak learning rate of Muon's matrices (--optimizer muon); the schedule scales it "
                              "as it scales --max-lr")
    schedule: str = _f("cosine", "cosine (decay from the end of warmup to the last step) or wsd (warmup, stable "
                                 "at the peak, then linear decay over the last --decay-frac of the steps)",
                       choices=("cosine", "wsd"))
    decay_frac: float = _f(0.4, "wsd: the fraction of the steps, at the end, over which the rate decays")
    weight_decay: float = _f(0.1, "decoupled weight decay, applied to matrices only")
    grad_clip: float = _f(1.0, "clip the gradient's global norm to this (0: no clipping)")
    # evaluation, samples and checkpoints (0 turns an event off)
    val_every: int = _f(250, "val loss every N steps and at the end")
    val_steps: int = _f(20, "micro-batches of val tokens per val loss, all processes together (always the same "
                            "tokens, rounded up to a multiple of the number of processes)")
    hellaswag_every: int = _f(250, "HellaSwag accuracy every N steps, at the first step and at the end")
    hellaswag_limit: int = _f(0, "HellaSwag on the first N examples only (0: all 10,042)")
    hellaswag_data: str = _f("", "a HellaSwag jsonl file (default: the official val set, downloaded once)")
    sample_every: int = _f(250, "samples every N steps, at the first step and at the end")
    sample_prompt: str = _f("Hello, I'm a language model,", "prompt of the samples")
    num_samples: int = _f(4, "samples drawn each time")
    sample_len: int = _f(32, "new tokens per sample")
    checkpoint_every: int = _f(5000, "checkpoint every N steps and at the end")
    keep_checkpoints: int = _f(0, "keep only the latest K checkpoints (0: keep all)")
    # run
    out_dir: str = _f("log", "where log.jsonl and the checkpoints go")
    device: str = _f("auto", "cuda, mps, cpu, or auto (the first of those that is available)")
    dtype: str = _f("auto", "autocast dtype: auto (bfloat16 where the device supports it), bfloat16 or float32",
                    choices=("auto", "bfloat16", "float32"))
    seed: int = _f(1337, "random seed of the initialisation")
    resume: bool = _f(False, "continue the latest checkpoint in --out-dir as the same run "
                             "(a new run if there is none yet)")
    skip_nonfinite: bool = _f(False, "skip an update whose loss or gradient is NaN/inf instead of stopping")
    init_from: str = _f("", "start from OpenAI's GPT-2 weights (gpt2, gpt2-medium, gpt2-large, gpt2-xl) or a Hugging "
                            "Face GPT-2 folder instead of random ones; the model's shape flags then follow it")
    compile: bool = _f(False, "torch.compile the model for the training steps (val, HellaSwag and samples run it as is)")
    fsdp: bool = _f(False, "shard weights, gradients and optimizer state across the processes (FSDP2) instead of "
                           "a whole copy on each (DDP): for a model too big for one device; needs torchrun")


MODEL_FIELDS = ("n_layer", "n_head", "n_embd", "block_size", "vocab_size",
                "rope", "qk_norm", "mlp", "logit_softcap", "zero_init_proj")
# fields that a resumed run must share with its checkpoint: they fix the model, its optimizer's state and the
# order of the data
RESUME_FIELDS = MODEL_FIELDS + ("optimizer", "batch_size", "seq_len", "total_batch_size")
DEFAULTS = TrainConfig()  # what a checkpoint written before a field existed had, in effect


def saved_config(ckpt: dict, name: str):
    """A field of the configuration saved in a checkpoint (its default for a field newer than the checkpoint)."""
    return ckpt["config"].get(name, getattr(DEFAULTS, name))


def _model_fields(name: str) -> dict:
    return {k: getattr(PRESETS[name], k) for k in MODEL_FIELDS}


def preset_config(name: str) -> TrainConfig:
    """The configuration of a preset: plain values, no magic."""
    if name == "seed":  # the reference run
        return TrainConfig()
    if name == "gpt2":  # GPT-2 124M on 10B tokens, as build-nanogpt: 0.5M tokens per step, 1 epoch
        return TrainConfig(preset="gpt2", **_model_fields("gpt2"), batch_size=64, seq_len=1024,
                           total_batch_size=524288, max_steps=19073, warmup_steps=715)
    if name == "tiny":  # for tests and smoke runs: seconds on a CPU
        return TrainConfig(preset="tiny", **_model_fields("tiny"), batch_size=4, seq_len=64,
                           total_batch_size=512, max_steps=50, warmup_steps=5, max_lr=1e-2, min_lr=1e-3,
                           val_every=10, val_steps=2, hellaswag_every=0, sample_every=0, sample_len=8,
                           checkpoint_every=25)
    raise ValueError(f"unknown preset {name!r}")


def apply_recipe(cfg: TrainConfig, recipe: str) -> TrainConfig:
    """The preset's configuration, trained with a recipe. gpt2 changes nothing. modern is this repository's
    choice from the public literature (README: "Recipes"); the preset's size, data and steps stay."""
    if recipe == "gpt2":
        return cfg
    if recipe == "modern":
        return replace(cfg, recipe="modern", rope=True, qk_norm=True, mlp="relu2",
                       zero_init_proj=True, optimizer="muon", muon_lr=0.02, max_lr=3e-3, min_lr=0.0,
                       weight_decay=0.0, schedule="wsd", decay_frac=0.4)
    raise ValueError(f"unknown recipe {recipe!r}")


def parse_config(argv=None) -> TrainConfig:
    """Flags -> TrainConfig: the preset's values first, then every flag given explicitly."""
    pre = argparse.ArgumentParser(add_help=False)
    pre.add_argument("--preset", default="seed", choices=fields(TrainConfig)[0].metadata["choices"])
    pre.add_argument("--recipe", default="gpt2", choices=fields(TrainConfig)[1].metadata["choices"])
    known, _ = pre.parse_known_args(argv)
    defaults = apply_recipe(preset_config(known.preset), known.recipe)
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    for f in fields(TrainConfig):
        default = getattr(defaults, f.name)
        kw = dict(default=default, help=f.metadata["help"] + " (default: %(default)s)")
        if isinstance(default, bool):
            kw["action"] = argparse.BooleanOptionalAction
        else:
            kw["type"] = type(default)
            kw["metavar"] = {int: "N", float: "X", str: "STR"}[type(default)]
        if "choices" in f.metadata:
            kw["choices"] = f.metadata["choices"]
            kw.pop("metavar", None)  # let argparse list the choices
        p.add_argument("--" + f.name.replace("_", "-"), **kw)
    cfg = TrainConfig(**vars(p.parse_args(argv)))
    try:
        check_config(cfg, world_size=int(os.environ.get("WORLD_SIZE", 1)))
    except ValueError as e:
        raise SystemExit(f"error: {e}") from None  # one line, no traceback, exit status 1
    return cfg


def check_config(cfg: TrainConfig, world_size: int = 1) -> None:
    """Raise ValueError, with the flag to change, for values that can't work together."""
    model_config(cfg)  # GPTConfig checks its own fields
    for name in ("batch_size", "seq_len", "total_batch_size", "max_steps", "max_lr", "muon_lr"):
        if getattr(cfg, name) <= 0:
            raise ValueError(f"--{name.replace('_', '-')} must be positive, got {getattr(cfg, name)}")
    for name in ("warmup_steps", "min_lr", "weight_decay", "grad_clip", "val_every", "val_steps",
                 "hellaswag_every", "hellaswag_limit", "sample_every", "num_samples", "sample_len", "checkpoint_every", "keep_checkpoints"):
        if getattr(cfg, name) < 0:
            raise ValueError(f"--{name.replace('_', '-')} can't be negative, got {getattr(cfg, name)}")
    if cfg.seq_len > cfg.block_size and not cfg.init_from:  # with --init-from, the context is the model's
        raise ValueError(f"--seq-len {cfg.seq_len} is longer than the model's context --block-size {cfg.block_size}")
    tokens_per_micro_step = cfg.batch_size * cfg.seq_len * world_size
    if cfg.total_batch_size % tokens_per_micro_step != 0:
        raise ValueError(f"--total-batch-size {cfg.total_batch_size} must be a multiple of --batch-size x "
                         f"--seq-len x processes = {cfg.batch_size} x {cfg.seq_len} x {world_size} "
                         f"= {tokens_per_micro_step}")
    if cfg.warmup_steps > cfg.max_steps:
        raise ValueError(f"--warmup-steps {cfg.warmup_steps} is more than --max-steps {cfg.max_steps}")
    if cfg.min_lr > cfg.max_lr:
        raise ValueError(f"--min-lr {cfg.min_lr} is above --max-lr {cfg.max_lr}")
    if not 0 < cfg.decay_frac <= 1:
        raise ValueError(f"--decay-frac must be in (0, 1], got {cfg.decay_frac}")
    if cfg.fsdp and cfg.optimizer == "muon":
        raise ValueError("--optimizer muon orthogonalises whole weight matrices, which --fsdp splits across the "
                         "processes: leave out --fsdp (each process then holds the whole model), or use --optimizer adamw")
    if cfg.init_from and not model_config(cfg).is_gpt2:
        raise ValueError(f"--init-from {cfg.init_from} loads GPT-2's architecture: it can't have --rope, --qk-norm, "
                         "--mlp relu2 or --logit-softcap (with --recipe modern, pass --no-rope --no-qk-norm --mlp gelu "
                         "--logit-softcap 0 to keep its optimizer and schedule only)")


def model_config(cfg: TrainConfig) -> GPTConfig:
    return GPTConfig(**{k: getattr(cfg, k) for k in MODEL_FIELDS})


def load_pretrained(cfg: TrainConfig, master: bool = True, world_size: int = 1) -> GPT:
    """The model of --init-from, through transformers; cfg's shape fields are set to its shape (they are
    saved with the checkpoints, and a resumed run checks them). The first process fetches it into the Hugging
    Face cache while the others wait, then they read that copy."""
    def load():
        try:
            return GPT.from_pretrained(cfg.init_from)
        except (ImportError, OSError, ValueError) as e:  # no transformers; no network and no cached copy; ...
            msg = next((line.strip() for line in str(e).splitlines() if line.strip()), type(e).__name__)
            raise SystemExit(f"error: cannot load --init-from {cfg.init_from}: {msg}") from None
    model = load() if master else None
    if world_size > 1:
        dist.barrier()
    model = model or load()
    for k in MODEL_FIELDS:
        setattr(cfg, k, getattr(model.config, k))
    if cfg.seq_len > cfg.block_size:
        raise SystemExit(f"error: --seq-len {cfg.seq_len} is longer than the context of --init-from {cfg.init_from} "
                         f"({cfg.block_size} tokens)")
    return model

# -----------------------------------------------------------------------------
# distributed setup and device


def setup_distributed(device: str) -> tuple[int, int]:
    """(rank, world_size): one process, (0, 1), unless launched by torchrun, which sets RANK. The processes
    talk through NCCL between GPUs and through gloo between CPU processes."""
    if "RANK" not in os.environ:
        return 0, 1
    device_type = device.split(":")[0]
    if device_type == "mps":
        raise SystemExit("error: --device mps runs in one process only: start train_gpt.py without torchrun")
    if device_type == "cuda":
        dist.init_process_group(backend="nccl", device_id=torch.device(device))
    else:
        dist.init_process_group(backend="gloo")
    return dist.get_rank(), dist.get_world_size()


def pick_device(name: str, local_rank: int = 0) -> str:
    """"auto" -> the best available of cuda, mps, cpu; a named device must be available."""
    if name not in ("auto", "cuda", "mps", "cpu"):
        raise SystemExit(f"error: --device must be auto, cuda, mps or cpu, got {name!r}")
    if name == "mps" and not torch.backends.mps.is_available():
        raise SystemExit("error: --device mps, but MPS is not available")
    if name == "auto":
        if torch.cuda.is_available():
            name = "cuda"
        elif torch.backends.mps.is_available():
            name = "mps"
        else:
            name = "cpu"
    if name == "cuda":
        if not torch.cuda.is_available():
            raise SystemExit("error: --device cuda, but no CUDA device is available")
        if local_rank >= torch.cuda.device_count():
            raise SystemExit(f"error: process {local_rank} of this machine has no GPU of its own: the machine has "
                             f"{torch.cuda.device_count()}, start at most that many (--nproc_per_node)")
        name = f"cuda:{local_rank}"  # one device per process
        torch.cuda.set_device(name)
    return name


def shard_model(model: GPT, device: str) -> GPT:
    """FSDP2, in place: each block's weights, gradients and optimizer state, then the rest's, split across the
    processes. A forward pass gathers a block's weights just before the block runs and frees them after."""
    # imported here: a second's work that a run without --fsdp doesn't need
    from torch.distributed.fsdp import fully_shard, register_fsdp_forward_method
    for block in model.transformer.h:
        fully_shard(block)
    # the root holds the rest: wpe, ln_f and wte, which *is* lm_head's weight (one tensor, sharded once, so
    # the tie holds). It keeps them gathered from forward to backward: the head is the first layer backward
    fully_shard(model, reshard_after_forward=False)
    assert model.lm_head.weight is model.transformer.wte.weight
    # HellaSwag's fast path and the sampler call hidden_states, then lm_head, instead of forward
    register_fsdp_forward_method(model, "hidden_states")
    # FSDP allocates each gathered weight at its first forward pass. Make it now, outside torch.inference_mode
    # (HellaSwag scores in it), or training could not write into a weight allocated there
    with torch.no_grad():
        model(torch.zeros(1, 1, dtype=torch.long, device=device))
    model.reshard()
    return model


def keep_freed_memory() -> None:
    """Let glibc keep freed memory for the next allocation instead of giving it back to the OS at once.

    A CPU training step allocates and frees the same large tensors every micro-step (the logits alone are
    B x T x 50,304 floats, 400 MB at 4 x 512). glibc serves blocks above 32 MB with mmap and unmaps them when
    freed, so every micro-step the kernel hands out those pages again, zeroed: page faults that cost the
    `seed` step ~30% of its time on a 2-core CPU. Raising the mmap and trim thresholds keeps the blocks
    in the heap for reuse. The price is memory: freed blocks stay with the process, and the heap
    fragments, so the peak resident set of a `seed` step at 4 x 512 grows from ~2.4 to ~3.8 GB
    (bench/train.py prints it). No effect outside glibc.
    """
    try:
        libc = ctypes.CDLL("libc.so.6")
    except OSError:
        return  # not glibc (macOS, musl, Windows)
    M_TRIM_THRESHOLD, M_MMAP_THRESHOLD = -1, -3  # mallopt's parameter numbers, from glibc's malloc.h
    libc.mallopt(M_MMAP_THRESHOLD, 1 << 30)  # the largest glibc allows on 64-bit: 32 MB..1 GB blocks from the heap
    libc.mallopt(M_TRIM_THRESHOLD, (1 << 31) - 1)  # never shrink the heap on a free


def autocast_dtype(device_type: str, dtype: str) -> torch.dtype:
    """bfloat16 where the device computes it natively, else float32 (autocast off)."""
    if dtype == "float32":
        return torch.float32
    if dtype == "bfloat16":
        return torch.bfloat16
    if device_type == "cuda" and torch.cuda.is_bf16_supported():
        return torch.bfloat16
    if device_type == "cpu" and torch.ops.mkldnn._is_mkldnn_bf16_supported():  # AVX-512 BF16 or AMX
        return torch.bfloat16
    return torch.float32


def autocast(device_type: str, dtype: torch.dtype):
    if dtype == torch.float32:
        return nullcontext()
    return torch.autocast(device_type=device_type, dtype=dtype)

# -----------------------------------------------------------------------------
# data


class DataLoaderLite:
    """Batches of B x T tokens read in order from a split's shards; x is the input, y the next token.

    Process `rank` of `world_size` takes every world_size-th batch, so processes never share tokens.
    At the end of a shard it moves to the next one, and after the last back to the first.
    """

    def __init__(self, data_root: str, split: str, B: int, T: int, rank: int = 0, world_size: int = 1,
                 vocab_size: int | None = None):
        self.data_root, self.split, self.B, self.T = data_root, split, B, T
        self.rank, self.world_size, self.vocab_size = rank, world_size, vocab_size
        if not os.path.isdir(data_root):
            raise ShardError(f"data dir {data_root} not found: make shards with `python fineweb.py`")
        self.shards = list_shards(data_root, split)
        if not self.shards:
            raise ShardError(f"no {split} shards ({split}_*.bin) in {data_root}: make them with `python fineweb.py`")
        self.reset()

    def _load(self, shard: int) -> None:
        self.shard = shard
        self.tokens = read_shard(self.shards[shard])
        if len(self.tokens) < self.B * self.T * self.world_size + 1:
            raise ShardError(f"{self.shards[shard]} holds {len(self.tokens):,} tokens, fewer than one batch "
                             f"({self.B} x {self.T} x {self.world_size} processes + 1)")
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
        if round_start + B * T * self.world_size + 1 > len(self.tokens):
            self._load((self.shard + 1) % len(self.shards))
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
        self.pos = state["pos"] + self.B * self.T * self.rank

# -----------------------------------------------------------------------------
# optimizer and learning-rate schedule


def configure_optimizer(model: torch.nn.Module, cfg: TrainConfig, device_type: str) -> torch.optim.Optimizer:
    """AdamW; weight decay on matrices (matmul weights, embeddings), not on biases and LayerNorm gains.

    With --optimizer muon, the blocks' weight matrices go to Muon instead (c_attn as its three matrices, q, k
    and v), with a learning rate of muon_lr / max_lr times the schedule's: each group's "lr_scale".
    """
    params = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
    if cfg.optimizer == "adamw":
        groups = [
            {"params": [p for _, p in params if p.dim() >= 2], "weight_decay": cfg.weight_decay},
            {"params": [p for _, p in params if p.dim() < 2], "weight_decay": 0.0},
        ]
        fused = device_type in ("cuda", "cpu")  # one kernel for the whole update instead of one per tensor
        return torch.optim.AdamW(groups, lr=cfg.max_lr, betas=(0.9, 0.95), eps=1e-8, fused=fused)
    hidden = {n for n, p in params if p.dim() == 2 and ".h." in f".{n}"}  # in the blocks; not wte / lm_head
    qkv = {n for n in hidden if n.endswith("attn.c_attn.weight")}
    scale = cfg.muon_lr / cfg.max_lr
    groups = [
        {"params": [p for n, p in params if n in qkv], "muon": True, "split": 3, "lr_scale": scale,
         "weight_decay": cfg.weight_decay},
        {"params": [p for n, p in params if n in hidden - qkv], "muon": True, "lr_scale": scale,
         "weight_decay": cfg.weight_decay},
        {"params": [p for n, p in params if p.dim() >= 2 and n not in hidden], "weight_decay": cfg.weight_decay},
        {"params": [p for _, p in params if p.dim() < 2], "weight_decay": 0.0},
    ]
    ns_dtype = torch.bfloat16 if device_type == "cuda" else None  # float32 where bfloat16 is emulated
    return MuonAdamW(groups, lr=cfg.max_lr, betas=(0.9, 0.95), eps=1e-8, ns_dtype=ns_dtype)


def get_lr(step: int, cfg: TrainConfig) -> float:
    """Linear warmup to max_lr over warmup_steps, then the decay to min_lr at max_steps: cosine from the end
    of warmup, or (wsd) none until the last decay_frac of the steps and linear over those."""
    if step < cfg.warmup_steps:
        return cfg.max_lr * (step + 1) / cfg.warmup_steps
    if step >= cfg.max_steps:
        return cfg.min_lr
    if cfg.schedule == "wsd":
        decay_start = max(cfg.warmup_steps, cfg.max_steps - round(cfg.decay_frac * cfg.max_steps))
        if step < decay_start:
            return cfg.max_lr
        decay_ratio = (step - decay_start) / (cfg.max_steps - decay_start)  # 0 -> 1
        return cfg.max_lr + decay_ratio * (cfg.min_lr - cfg.max_lr)
    decay_ratio = (step - cfg.warmup_steps) / (cfg.max_steps - cfg.warmup_steps)  # 0 -> 1
    coeff = 0.5 * (1.0 + math.cos(math.pi * decay_ratio))  # 1 -> 0
    return cfg.min_lr + coeff * (cfg.max_lr - cfg.min_lr)

# -----------------------------------------------------------------------------
# evaluation, logging and checkpoints


@torch.no_grad()
def evaluate_val(model: torch.nn.Module, loader: DataLoaderLite, steps: int, device: str,
                 dtype: torch.dtype) -> float:
    """Mean loss over the first `steps` val batches, all processes together: the same tokens every time,
    whatever the number of processes (`steps` rounded up to a multiple of it)."""
    model.eval()
    loader.reset()
    world_size = dist.get_world_size() if dist.is_initialized() else 1
    steps = math.ceil(steps / world_size)  # this process's share; the loader gives it every world_size-th batch
    total = torch.zeros((), device=device)
    for _ in range(steps):
        x, y = loader.next_batch()
        with autocast(device.split(":")[0], dtype):
            _, loss = model(x.to(device), y.to(device))
        total += loss.detach()
    if dist.is_initialized():
        dist.all_reduce(total, op=dist.ReduceOp.SUM)
        total /= dist.get_world_size()
    model.train()
    return (total / steps).item()


class Logger:
    """Appends one JSON object per event to <out_dir>/log.jsonl and flushes it at once."""

    def __init__(self, out_dir: str, enabled: bool):
        self.path = os.path.join(out_dir, "log.jsonl")
        self.enabled = enabled

    def log(self, step: int, **metrics) -> None:
        if self.enabled:
            try:
                with open(self.path, "a") as f:
                    f.write(json.dumps({"step": step, **metrics}) + "\n")
            except OSError as e:
                raise SystemExit(f"error: cannot write {self.path}: {e.strerror}") from None

    def size(self) -> int:
        return os.path.getsize(self.path) if os.path.exists(self.path) else 0

    def truncate(self, size: int) -> None:
        """Forget what was logged after a checkpoint that a resumed run now redoes."""
        if self.enabled and self.size() > size:  # never grow it: truncate() would pad with zero bytes
            with open(self.path, "r+") as f:
                f.truncate(size)


class CheckpointError(Exception):
    """A checkpoint that can't be used: damaged, not ours, or unsafe to load."""


class UnsafeCheckpointError(CheckpointError):
    """A checkpoint that holds pickled Python objects: loading it could run code."""


# also "world_size" (the number of processes that wrote it; absent in older checkpoints, all from one process)
# and "events_done" (absent: True)
CHECKPOINT_KEYS = {"model", "optimizer", "step", "config", "train_loader", "rng", "log_bytes", "checksum"}


def checkpoint_path(out_dir: str, step: int) -> str:
    return os.path.join(out_dir, f"ckpt_{step:06d}.pt")


def list_checkpoints(out_dir: str) -> list[str]:
    """The checkpoints (ckpt_<step>.pt) in out_dir, newest first; temporary files don't match."""
    steps = {}
    for path in glob.glob(os.path.join(out_dir, "ckpt_*.pt")):
        m = re.fullmatch(r"ckpt_(\d+)\.pt", os.path.basename(path))
        if m:
            steps[path] = int(m.group(1))
    return sorted(steps, key=steps.get, reverse=True)


def latest_checkpoint(out_dir: str) -> str | None:
    """The checkpoint with the highest step in out_dir, or None."""
    return next(iter(list_checkpoints(out_dir)), None)


def state_checksum(state) -> int:
    """CRC32 of every tensor's bytes and every other value, in a fixed order. torch.load doesn't check
    the data it reads, so a flipped bit in a weight would otherwise load without complaint."""
    crc = 0
    if isinstance(state, dict):
        for k in sorted(state, key=str):
            crc = zlib.crc32(str(k).encode(), crc)
            crc = zlib.crc32(state_checksum(state[k]).to_bytes(4, "little"), crc)
    elif isinstance(state, (list, tuple)):
        for v in state:
            crc = zlib.crc32(state_checksum(v).to_bytes(4, "little"), crc)
    elif isinstance(state, torch.Tensor):
        t = state.detach().cpu().contiguous()
        crc = zlib.crc32(str((t.dtype, tuple(t.shape))).encode(), crc)
        crc = zlib.crc32(t.view(-1).view(torch.uint8).numpy().data, crc) if t.numel() else crc
    else:
        crc = zlib.crc32(repr(state).encode(), crc)
    return crc


def _os_reason(e: BaseException) -> str:
    """The OS's words for a failed write (torch.save wraps them in a RuntimeError of its own)."""
    while e is not None:
        if isinstance(e, OSError) and e.strerror:
            return e.strerror
        e = e.__cause__ or e.__context__
    return "write failed"


def save_checkpoint(path: str, state: dict) -> None:
    """Write to a temporary file, then rename: a checkpoint on disk is always a complete one. If the
    write fails (a full disk), the temporary file goes and the earlier checkpoints stay as they were."""
    state = {**state, "checksum": state_checksum(state)}
    tmp = path + ".tmp"
    try:
        with open(tmp, "wb") as f:
            torch.save(state, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except (OSError, RuntimeError) as e:
        if os.path.exists(tmp):
            os.remove(tmp)
        raise CheckpointError(f"cannot write checkpoint {path}: {_os_reason(e)}") from None


def load_checkpoint(path: str) -> dict:
    """A checkpoint's contents, checked. weights_only=True unpickles tensors and plain containers only,
    so a checkpoint can't run code. Raises CheckpointError with the reason on one line."""
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=True)
    except FileNotFoundError:
        raise CheckpointError(f"checkpoint {path} not found") from None
    except Exception as e:  # torch raises UnpicklingError, RuntimeError, EOFError, KeyError ... for bad files
        lines = [line for line in str(e).splitlines() if line.strip()]
        unsafe = [line for line in lines if "GLOBAL" in line]
        if unsafe:  # a pickle that names a Python object: loading it would run code
            raise UnsafeCheckpointError(f"refusing to load {path}: it holds pickled Python objects, not only tensors "
                                  f"({unsafe[0].strip()}), and could run code. Checkpoints of this "
                                  "repository never do; load it yourself only if you trust its source") from None
        if os.path.getsize(path) == 0:
            reason = "an empty file"
        elif not zipfile.is_zipfile(path):  # torch.save writes a zip archive; a cut-off one has no directory
            reason = "not a whole file written by torch.save"
        else:
            reason = next((line.strip()[:120] for line in lines if "PytorchStreamReader" in line), type(e).__name__)
        raise CheckpointError(f"{path} is damaged or not a checkpoint ({reason})") from None
    if not isinstance(ckpt, dict):
        raise CheckpointError(f"{path} is not a checkpoint of train_gpt.py (it holds a {type(ckpt).__name__})")
    if not CHECKPOINT_KEYS <= set(ckpt):
        raise CheckpointError(f"{path} is not a checkpoint of train_gpt.py (it lacks "
                              f"{', '.join(sorted(CHECKPOINT_KEYS - set(ckpt)))})")
    checksum = ckpt.pop("checksum")
    if state_checksum(ckpt) != checksum:
        raise CheckpointError(f"{path} is damaged: its contents don't match the checksum written with it")
    return ckpt


def load_latest_checkpoint(out_dir: str) -> tuple[str, dict] | None:
    """The newest checkpoint of out_dir that loads, or None if there is none. A damaged one (a crash or a
    disk error) gets a warning and the one before it is tried; one that is unsafe to load stops the run."""
    for path in list_checkpoints(out_dir):
        try:
            return path, load_checkpoint(path)
        except UnsafeCheckpointError:
            raise
        except CheckpointError as e:
            print(f"warning: {e}; trying the checkpoint before it", file=sys.stderr)
    return None


def open_checkpoint(path: str) -> tuple[str, dict]:
    """A checkpoint file, or the latest good checkpoint of an out dir, loaded. SystemExit on failure."""
    try:
        if os.path.isdir(path):
            found = load_latest_checkpoint(path)
            if found is None:
                raise CheckpointError(f"no checkpoint (ckpt_*.pt) in {path}" if not list_checkpoints(path)
                                      else f"no checkpoint in {path} can be loaded (see the warnings above)")
            return found
        return path, load_checkpoint(path)
    except CheckpointError as e:
        raise SystemExit(f"error: {e}") from None


# Under FSDP, a checkpoint is still one file in one format: the whole state, gathered on process 0, exactly
# what a plain model and optimizer would save. It loads in one process, and resumes with or without --fsdp.


def training_state(model: torch.nn.Module, optimizer: torch.optim.Optimizer, fsdp: bool) -> tuple[dict, dict]:
    """(model.state_dict(), optimizer.state_dict()) of the whole model. Under FSDP every process must call
    it (it gathers the shards); process 0 gets them on the CPU, the others ({}, {})."""
    if not fsdp:
        return model.state_dict(), optimizer.state_dict()
    from torch.distributed.checkpoint.state_dict import (StateDictOptions, get_model_state_dict,
                                                         get_optimizer_state_dict)
    options = StateDictOptions(full_state_dict=True, cpu_offload=True)
    model_state = get_model_state_dict(model, options=options)
    optim_state = get_optimizer_state_dict(model, optimizer, options=options)  # keyed by parameter name
    if not model_state:
        return {}, {}
    model_state["lm_head.weight"] = model_state["transformer.wte.weight"]  # tied again: saved once, as in a plain one
    index = {name: i for i, name in enumerate(n for g in optim_state["param_groups"] for n in g["params"])}
    optim_state = {"state": {index[n]: s for n, s in optim_state["state"].items()},  # keyed by position
                   "param_groups": [{**g, "params": [index[n] for n in g["params"]]} for g in optim_state["param_groups"]]}
    return model_state, optim_state


def load_training_state(model: torch.nn.Module, optimizer: torch.optim.Optimizer, ckpt: dict, fsdp: bool) -> None:
    """The inverse of training_state: every process loads the checkpoint's whole state and keeps its own shards."""
    if not fsdp:
        model.load_state_dict(ckpt["model"])
        optimizer.load_state_dict(ckpt["optimizer"])
        return
    from torch.distributed.checkpoint.state_dict import (StateDictOptions, set_model_state_dict,
                                                         set_optimizer_state_dict)
    options = StateDictOptions(full_state_dict=True)
    set_model_state_dict(model, ckpt["model"], options=options)
    name_of = {p: n for n, p in model.named_parameters()}
    names = [name_of[p] for g in optimizer.param_groups for p in g["params"]]  # position -> parameter name
    state = ckpt["optimizer"]
    state = {"state": {names[i]: s for i, s in state["state"].items()},
             "param_groups": [{**g, "params": [names[i] for i in g["params"]]} for g in state["param_groups"]]}
    set_optimizer_state_dict(model, optimizer, state, options=options)


def model_from_checkpoint(ckpt: dict) -> GPT:
    """The model a checkpoint holds, built from the configuration saved with it."""
    model = GPT(GPTConfig(**{k: saved_config(ckpt, k) for k in MODEL_FIELDS}))
    model.load_state_dict(ckpt["model"])
    return model


@torch.no_grad()
def sample_text(model: GPT, enc, prompt: str, num_samples: int, max_new_tokens: int, top_k: int | None,
                seed: int, device: str, dtype: torch.dtype = torch.float32, temperature: float = 1.0,
                top_p: float | None = None) -> list[str]:
    """num_samples continuations of prompt. Its own generator: the same seed gives the same text,
    and the training run's random state is left alone."""
    was_training = model.training
    model.eval()
    tokens = torch.tensor(enc.encode_ordinary(prompt), dtype=torch.long, device=device)
    idx = tokens.unsqueeze(0).repeat(num_samples, 1)  # (num_samples, len(prompt))
    generator = torch.Generator(device=device).manual_seed(seed)
    with autocast(device.split(":")[0], dtype):
        out = model.generate(idx, max_new_tokens, temperature=temperature, top_k=top_k, top_p=top_p,
                             n_vocab=enc.n_vocab, generator=generator)
    model.train(was_training)
    return [enc.decode(row.tolist()) for row in out]


def run_info(cfg: TrainConfig, device: str, world_size: int) -> dict:
    """What a reader of the log needs to reproduce the run: config, versions, hardware."""
    info = {"config": asdict(cfg), "python": platform.python_version(), "torch": torch.__version__,
            "device": device, "world_size": world_size, "argv": sys.argv}
    if device.startswith("cuda"):
        info["gpu"] = torch.cuda.get_device_name(device)
    return info

# -----------------------------------------------------------------------------
# stopping cleanly


class StopSignals:
    """SIGINT (Ctrl-C) or SIGTERM (a job scheduler's pre-emption) asks the loop to stop after the step it is
    in, with a checkpoint. A second SIGINT exits at once: the checkpoints on disk are always complete."""

    def __init__(self):
        self.received: int | None = None
        self._previous = {}

    def __enter__(self):
        if threading.current_thread() is not threading.main_thread():
            return self  # only the main thread may set handlers; the default ones stay
        for sig in (signal.SIGINT, signal.SIGTERM):
            self._previous[sig] = signal.signal(sig, self._handle)
        return self

    def __exit__(self, *exc):
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)

    def _handle(self, signum, frame):
        if self.received is not None and signum == signal.SIGINT:
            print("\nsecond interrupt: exiting now, without a checkpoint of this step", file=sys.stderr, flush=True)
            os._exit(130)
        self.received = signum
        print(f"\n{signal.Signals(signum).name}: stopping after this step with a checkpoint "
              "(Ctrl-C again to exit at once)", file=sys.stderr, flush=True)

    def stop(self, device: str) -> bool:
        """Whether to stop now; under DDP, every process stops at the same step if any one got a signal."""
        if not dist.is_initialized():
            return self.received is not None
        flag = torch.tensor(float(self.received is not None), device=device)
        dist.all_reduce(flag, op=dist.ReduceOp.MAX)
        return bool(flag.item())


def prune_checkpoints(out_dir: str, keep: int) -> None:
    """Delete all but the `keep` newest checkpoints (keep=0: delete none)."""
    if keep > 0:
        for path in list_checkpoints(out_dir)[keep:]:
            os.remove(path)

# -----------------------------------------------------------------------------
# training


def main(argv=None) -> None:
    cfg = parse_config(argv)
    local_rank = int(os.environ.get("LOCAL_RANK", 0))  # the process's number on its machine (torchrun sets it)
    device = pick_device(cfg.device, local_rank)  # each process binds its own GPU before they connect
    rank, world_size = setup_distributed(device)
    master = rank == 0  # only this process prints, logs, samples and writes checkpoints
    if cfg.fsdp and not dist.is_initialized():
        raise SystemExit("error: --fsdp shards the model across processes started by torchrun: "
                         "torchrun --standalone --nproc_per_node=N train_gpt.py --fsdp ...")
    device_type = device.split(":")[0]
    dtype = autocast_dtype(device_type, cfg.dtype)
    if device_type == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = True  # float32 matmuls (outside autocast) on tensor cores
        torch.backends.cudnn.allow_tf32 = True
    if device_type == "cpu":
        keep_freed_memory()
    torch.manual_seed(cfg.seed)
    print0 = print if master else (lambda *a, **k: None)
    pretrained = load_pretrained(cfg, master, world_size) if cfg.init_from else None

    if master:
        try:
            os.makedirs(cfg.out_dir, exist_ok=True)
            with open(os.path.join(cfg.out_dir, "log.jsonl"), "a"):  # can we write there at all?
                pass
        except OSError as e:
            raise SystemExit(f"error: cannot write to --out-dir {cfg.out_dir}: {e.strerror}") from None
        for tmp in glob.glob(os.path.join(cfg.out_dir, "ckpt_*.pt.tmp")):
            os.remove(tmp)  # a checkpoint whose writing was cut short by a crash
    logger = Logger(cfg.out_dir, enabled=master)

    # data
    B, T = cfg.batch_size, cfg.seq_len
    grad_accum = cfg.total_batch_size // (B * T * world_size)
    try:
        train_loader = DataLoaderLite(cfg.data_dir, "train", B, T, rank, world_size, cfg.vocab_size)
        val_loader = DataLoaderLite(cfg.data_dir, "val", B, T, rank, world_size, cfg.vocab_size)
    except ShardError as e:
        raise SystemExit(f"error: {e}") from None

    # HellaSwag examples, read once (the first process downloads them, the others wait and read the copy)
    hellaswag_examples = None
    if cfg.hellaswag_every > 0:
        try:
            path = cfg.hellaswag_data
            if not path and master:
                path = hellaswag.val_file(flag="--hellaswag-data")
            if world_size > 1:
                dist.barrier()
            path = path or hellaswag.val_file(flag="--hellaswag-data")  # the others: the copy the first one made
            hellaswag_examples = hellaswag.load_examples(path, cfg.hellaswag_limit or None)
        except hellaswag.HellaSwagError as e:
            raise SystemExit(f"error: {e} (or turn HellaSwag off: --hellaswag-every 0)") from None

    # model and optimizer
    # the same initial weights in every process: the same seed, or the same pretrained model
    raw_model = (pretrained or GPT(model_config(cfg))).to(device)
    if cfg.fsdp:  # each process keeps 1/world_size of the weights, gradients and optimizer state
        model = raw_model = shard_model(raw_model, device)
    elif world_size > 1:  # each process keeps a whole copy; DDP averages the gradients
        model = DDP(raw_model, device_ids=[local_rank] if device_type == "cuda" else None)
    else:
        model = raw_model
    optimizer = configure_optimizer(raw_model, cfg, device_type)
    # compiled for the training steps only: val, HellaSwag and sampling (other shapes, no gradients) run as is
    train_model = torch.compile(model) if cfg.compile else model
    enc = get_encoding() if cfg.hellaswag_every or cfg.sample_every else None  # a second or two to build

    # a new run, or the same run continued from its latest good checkpoint
    if not cfg.resume and latest_checkpoint(cfg.out_dir):
        raise SystemExit(f"error: {cfg.out_dir} holds checkpoints of an earlier run: continue it with --resume, "
                         "or choose another --out-dir")
    try:
        found = load_latest_checkpoint(cfg.out_dir) if cfg.resume else None
    except CheckpointError as e:
        raise SystemExit(f"error: {e}") from None
    if cfg.resume and not found and latest_checkpoint(cfg.out_dir):
        raise SystemExit(f"error: no checkpoint in {cfg.out_dir} can be loaded (see the warnings above); "
                         "nothing was changed")
    if world_size > 1:  # each process reads --out-dir itself: on several machines it must be a folder they share
        found_step = found[1]["step"] if found else -1
        steps = torch.tensor([found_step, -found_step], device=device)
        dist.all_reduce(steps, op=dist.ReduceOp.MAX)  # (latest, -earliest) found by any process
        if steps[0].item() != -steps[1].item():
            raise SystemExit(f"error: the processes found different checkpoints in --out-dir {cfg.out_dir}: on "
                             "several machines, make it a folder they all share; nothing was changed")
    start_step, events_done = 0, False
    if found:
        path, ckpt = found
        mismatched = [k for k in RESUME_FIELDS if saved_config(ckpt, k) != getattr(cfg, k)]
        if mismatched:
            diff = ", ".join(f"--{k.replace('_', '-')} {saved_config(ckpt, k)} (now {getattr(cfg, k)})" for k in mismatched)
            raise SystemExit(f"error: {path} belongs to a different run: it has {diff}")
        written_by = ckpt.get("world_size", 1)  # older checkpoints: always one process
        if written_by != world_size:
            raise SystemExit(f"error: {path} was written by {written_by} process(es), this run has {world_size}: "
                             f"resume it with {written_by} (the position in the training data depends on their "
                             "number); nothing was changed")
        load_training_state(raw_model, optimizer, ckpt, cfg.fsdp)
        try:
            train_loader.load_state_dict(ckpt["train_loader"])
        except ShardError as e:
            raise SystemExit(f"error: {e}") from None
        torch.set_rng_state(ckpt["rng"]["cpu"])
        if device_type == "cuda" and "cuda" in ckpt["rng"]:
            torch.cuda.set_rng_state(ckpt["rng"]["cuda"], device)
        start_step, events_done = ckpt["step"], ckpt.get("events_done", True)
        logger.truncate(ckpt["log_bytes"])  # the log as it was when the checkpoint was written
        print0(f"resumed from {path} at step {start_step}")
    else:
        if cfg.resume:
            print0(f"no checkpoint in {cfg.out_dir} yet: starting a new run")
        logger.truncate(0)  # a new run, a new log
    logger.log(start_step, event="resume" if found else "start", **run_info(cfg, device, world_size))
    print0(f"model: {raw_model.num_params():,} parameters | device {device} | autocast {dtype} | "
           f"{world_size} process(es) | {grad_accum} micro-steps of {B} x {T} per step")

    def due(every: int, step: int) -> bool:
        return every > 0 and (step % every == 0 or step == cfg.max_steps)

    def checkpoint(step: int, events_done: bool) -> str:
        """Everything needed to continue the run at `step` exactly as if it had never stopped. Every process
        calls it (under FSDP they gather the state together); process 0 writes it and the others wait, so
        that none goes on, or exits, before the checkpoint is on disk."""
        path = checkpoint_path(cfg.out_dir, step)
        model_state, optim_state = training_state(raw_model, optimizer, cfg.fsdp)
        error = None
        if master and not all(torch.isfinite(t).all() for t in model_state.values()):
            error = (f"error: the weights hold NaN or inf at step {step}: no checkpoint written, "
                     f"the earlier ones in {cfg.out_dir} are intact")
        elif master:
            rng = {"cpu": torch.get_rng_state()}
            if device_type == "cuda":
                rng["cuda"] = torch.cuda.get_rng_state(device)
            try:
                save_checkpoint(path, {
                    "model": model_state, "optimizer": optim_state, "step": step, "events_done": events_done,
                    "config": asdict(cfg), "train_loader": train_loader.state_dict(), "rng": rng,
                    "log_bytes": logger.size(), "world_size": world_size})
                prune_checkpoints(cfg.out_dir, cfg.keep_checkpoints)
            except CheckpointError as e:
                error = f"error: {e}; the earlier checkpoints in {cfg.out_dir} are intact"
        if world_size > 1:  # process 0's verdict, to all: a barrier, and if it failed, all stop
            failed = torch.tensor(float(error is not None), device=device)
            dist.all_reduce(failed, op=dist.ReduceOp.MAX)
            if failed.item() and error is None:
                error = f"error: process 0 could not write {path}: see its message"
        if error:
            raise SystemExit(error)
        return path

    clock = None  # (time, step) after the first step of this process
    with StopSignals() as signals:
        for step in range(start_step, cfg.max_steps + 1):
            last_step = step == cfg.max_steps
            if not last_step and signals.stop(device):
                name = signal.Signals(signals.received or signal.SIGTERM).name
                logger.log(step, event="stop", signal=name)
                path = checkpoint(step, events_done=False)
                print0(f"stopped by {name} before step {step}: {path} written, continue with --resume")
                if world_size > 1:
                    dist.destroy_process_group()
                if signals.received == signal.SIGINT:
                    raise SystemExit(130)
                return  # SIGTERM: exit status 0, so a scheduler sees a clean pre-emption
            # the events of a resumed run's first step happened before its checkpoint was written
            if not (step == start_step and events_done):
                if due(cfg.val_every, step):
                    val_loss = evaluate_val(model, val_loader, cfg.val_steps, device, dtype)
                    print0(f"step {step:5d} | val loss {val_loss:.4f}")
                    logger.log(step, val_loss=val_loss)
                if due(cfg.hellaswag_every, step):  # every process scores its share of the examples
                    hs = hellaswag.evaluate(raw_model, hellaswag_examples, enc, device, dtype, rank=rank,
                                            world_size=world_size, progress=master, equal_shares=cfg.fsdp)
                    if cfg.fsdp:
                        raw_model.reshard()  # the root's weights stay gathered after a forward pass (see shard_model)
                    print0(f"step {step:5d} | hellaswag acc_norm {hs['acc_norm']:.4f} | acc {hs['acc']:.4f} | "
                           f"n {hs['n']}")
                    logger.log(step, hellaswag_acc_norm=hs["acc_norm"], hellaswag_acc=hs["acc"], hellaswag_n=hs["n"])
                # under FSDP every process takes part in each forward pass (and draws the same samples)
                if due(cfg.sample_every, step) and (master or cfg.fsdp):
                    samples = sample_text(raw_model, enc, cfg.sample_prompt, cfg.num_samples, cfg.sample_len,
                                          top_k=50, seed=42, device=device, dtype=dtype)
                    for s in samples:
                        print0(f"sample: {s!r}")
                    logger.log(step, samples=samples)
                if step > 0 and due(cfg.checkpoint_every, step):
                    path = checkpoint(step, events_done=True)
                    print0(f"step {step:5d} | checkpoint {path}")
            if last_step:
                break
            eta = None  # seconds to the last step, at the pace of the steps so far (evaluations included)
            if clock is not None and step > clock[1]:
                eta = (time.perf_counter() - clock[0]) / (step - clock[1]) * (cfg.max_steps - step)
            train_step(step, cfg, train_model, raw_model, optimizer, train_loader, grad_accum, device, dtype, logger,
                       print0, eta)
            if clock is None:  # the first step (warm-up, compilation) doesn't count for the ETA
                clock = (time.perf_counter(), step + 1)

    if world_size > 1:
        dist.destroy_process_group()


def train_step(step, cfg, model, raw_model, optimizer, train_loader, grad_accum, device, dtype, logger,
               print0, eta: float | None = None) -> float | None:
    """One optimizer step: grad_accum micro-batches, gradients summed, then one update. Returns the
    step's loss (None if a non-finite update was skipped)."""
    device_type = device.split(":")[0]
    world_size = dist.get_world_size() if dist.is_initialized() else 1
    t0 = time.perf_counter()
    model.train()
    optimizer.zero_grad(set_to_none=True)
    loss_accum = torch.zeros((), device=device)
    for micro_step in range(grad_accum):
        x, y = train_loader.next_batch()
        if device_type == "cuda":  # pinned host memory: the copy runs while the GPU still computes
            x, y = x.pin_memory().to(device, non_blocking=True), y.pin_memory().to(device, non_blocking=True)
        else:
            x, y = x.to(device), y.to(device)
        # average the gradients across processes on the last micro-step only: DDP all-reduces them,
        # FSDP reduce-scatters them, each process keeping the mean of its own shard
        last = micro_step == grad_accum - 1
        if cfg.fsdp:
            model.set_requires_gradient_sync(last)
        sync = model.no_sync() if world_size > 1 and not cfg.fsdp and not last else nullcontext()
        with sync:
            with autocast(device_type, dtype):
                _, loss = model(x, y)
            loss = loss / grad_accum  # the mean over the whole batch, not a sum of means
            loss_accum += loss.detach()
            loss.backward()
    if world_size > 1:
        dist.all_reduce(loss_accum, op=dist.ReduceOp.AVG)
    norm = torch.nn.utils.clip_grad_norm_(raw_model.parameters(), cfg.grad_clip if cfg.grad_clip > 0 else float("inf"))
    # every process sees the same averaged loss and norm, so they all make the same choice here
    train_loss, grad_norm = loss_accum.item(), norm.item()  # one device-to-host copy each
    if not (math.isfinite(train_loss) and math.isfinite(grad_norm)):
        if not cfg.skip_nonfinite:
            raise SystemExit(f"error: non-finite loss {train_loss} (gradient norm {grad_norm}) at step {step}: "
                             "stopped before the update; resume from the last checkpoint with a lower --max-lr, "
                             "or pass --skip-nonfinite")
        optimizer.zero_grad(set_to_none=True)
        print0(f"step {step:5d} | non-finite loss {train_loss} (norm {grad_norm}): update skipped")
        logger.log(step, skipped="non-finite loss", loss=str(train_loss), grad_norm=str(grad_norm))
        return
    lr = get_lr(step, cfg)
    for group in optimizer.param_groups:
        group["lr"] = lr * group.get("lr_scale", 1.0)
    optimizer.step()
    if device_type == "cuda":
        torch.cuda.synchronize()
    dt = time.perf_counter() - t0
    tok_per_s = cfg.total_batch_size / dt
    print0(f"step {step:5d} | loss {train_loss:.6f} | lr {lr:.4e} | norm {grad_norm:.4f} | "
           f"{dt * 1000:.1f} ms | {tok_per_s:,.0f} tok/s" + (f" | eta {format_duration(eta)}" if eta is not None else ""))
    logger.log(step, train_loss=train_loss, lr=lr, grad_norm=grad_norm, dt_ms=dt * 1000, tok_per_s=tok_per_s)
    return train_loss



def format_duration(seconds: float) -> str:
    """3725 -> '1h02m', 125 -> '2m05s', 42.4 -> '42s'."""
    s = int(round(seconds))
    if s >= 3600:
        return f"{s // 3600}h{s % 3600 // 60:02d}m"
    if s >= 60:
        return f"{s // 60}m{s % 60:02d}s"
    return f"{s}s"


if __name__ == "__main__":
    main()
