"""
Train a GPT-2 style model on token shards written by fineweb.py.

    python train_gpt.py                                   # the reference run: `seed` preset, ~16M params
    python train_gpt.py --preset tiny --max-steps 200     # a quick run on a laptop CPU
    python train_gpt.py --resume                          # continue the latest checkpoint in --out-dir
    python train_gpt.py --recipe modern                   # rotary, QK-norm, ReLU², Muon, WSD (docs/recipes.md)
    torchrun --standalone --nproc_per_node=8 train_gpt.py --preset gpt2          # 8 GPUs (docs/distributed.md)
    torchrun --standalone --nproc_per_node=8 train_gpt.py --preset gpt2 --fsdp   # the same, weights sharded

Every field of TrainConfig is a flag (--max-steps, --batch-size, ...); --preset picks a whole
configuration, --recipe how it is trained, and the other flags override both. Metrics go to <out-dir>/log.jsonl,
one JSON object per event, and checkpoints to <out-dir>/ckpt_<step>.pt.
"""

import argparse
import gc
import math
import os
import signal
import time
from dataclasses import asdict, dataclass, field, fields, replace
from functools import partial

import torch
import torch.distributed as dist
from torch.nn.parallel import DistributedDataParallel as DDP

import hellaswag
from checkpoint import (CheckpointError, checkpoint_path, checkpoint_to_resume, prune_checkpoints,
                        remove_partial_checkpoints, save_checkpoint)
from dataloader import DataLoaderLite
from device import (DTYPES, autocast, autocast_dtype, compiled, configure_for_training, host_memory, native_bf16,
                    out_of_memory_in_one_line, pick_device, synchronize, to_device)
from distributed import (any_process, full_state, grad_sync, load_full_state, same_in_every_process,
                         setup_distributed, shard_model)
from errors import one_line
from generate import sample_text
from model import GPT, GPTConfig
from optim import MuonAdamW
from run_log import ETA, Logger, run_info, step_line
from shards import ShardError, unfinished
from signals import StopSignals
from tokenizer import N_VOCAB, get_encoding

# -----------------------------------------------------------------------------
# config and presets


def _f(default, help: str, **kw):
    """A config field with its --help text."""
    return field(default=default, metadata={"help": help, **kw})


@dataclass
class TrainConfig:
    preset: str = _f("seed", "seed (the reference run), gpt2 (GPT-2 124M) or tiny (a smoke test); flags override it")
    recipe: str = _f("gpt2", "how to train it: gpt2 (the reference run) or modern (rotary positions, QK-norm, ReLU², "
                             "zero-initialised projections, Muon, warmup-stable-decay); other flags override it")
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
    optimizer: str = _f("adamw", "adamw, or muon: Muon for the blocks' matrices (at --muon-lr), AdamW for the rest",
                        choices=("adamw", "muon"))
    max_lr: float = _f(6e-4, "peak learning rate, reached at the end of warmup")
    min_lr: float = _f(6e-5, "learning rate at the last step, after the decay")
    muon_lr: float = _f(0.02, "peak learning rate of Muon's matrices; the schedule scales it as it scales --max-lr")
    schedule: str = _f("cosine", "cosine (from the end of warmup to the last step) or wsd (warmup, stable, then "
                                 "linear decay over the last --decay-frac of the steps)", choices=("cosine", "wsd"))
    decay_frac: float = _f(0.4, "wsd: the fraction of the steps, at the end, over which the rate decays")
    weight_decay: float = _f(0.1, "decoupled weight decay, applied to matrices only")
    grad_clip: float = _f(1.0, "clip the gradient's global norm to this (0: no clipping)")
    # evaluation, samples and checkpoints (0 turns an event off)
    val_every: int = _f(250, "val loss every N steps, at the first step and at the end")
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
    dtype: str = _f("auto", "autocast dtype: auto (bfloat16 where the device computes it natively), bfloat16 or "
                            "float32", choices=DTYPES)
    seed: int = _f(1337, "random seed of the initialisation")
    wandb: str = _f("", "also log to this Weights & Biases project (first process only; needs pip install wandb)")
    wandb_run: str = _f("", "the W&B run's name (default: W&B picks one); a resumed run continues its W&B run")
    resume: bool = _f(False, "continue the latest checkpoint in --out-dir as the same run (a new run if there is none)")
    skip_nonfinite: bool = _f(False, "skip an update whose loss or gradient is NaN/inf instead of stopping")
    init_from: str = _f("", "start from OpenAI's GPT-2 (gpt2, gpt2-medium, gpt2-large, gpt2-xl) or a Hugging Face "
                            "GPT-2 folder instead of random weights; the model's shape flags then follow it")
    compile: bool = _f(False, "torch.compile the model for the training steps (evaluations and samples run it as is)")
    fsdp: bool = _f(False, "shard weights, gradients and optimizer state across the processes (FSDP2) instead of a "
                           "whole copy in each (DDP): for a model too big for one device; needs torchrun")


PRESETS = {
    # the reference run: the defaults above. 16,299,520 parameters, 12,207 steps of 32,768 tokens (400M)
    "seed": TrainConfig(),
    # GPT-2 small (124,475,904 parameters at vocab 50,304) on 10B tokens, as build-nanogpt: 0.5M tokens per step
    "gpt2": TrainConfig(preset="gpt2", n_layer=12, n_head=12, n_embd=768, batch_size=64, seq_len=1024,
                        total_batch_size=524288, max_steps=19073, warmup_steps=715),
    # for tests and smoke runs: seconds on a CPU
    "tiny": TrainConfig(preset="tiny", block_size=64, n_layer=2, n_head=2, n_embd=32, batch_size=4, seq_len=64,
                        total_batch_size=512, max_steps=50, warmup_steps=5, max_lr=1e-2, min_lr=1e-3,
                        val_every=10, val_steps=2, hellaswag_every=0, sample_every=0, sample_len=8,
                        checkpoint_every=25),
}

# what a recipe changes in the preset's configuration. modern is this repository's choice from the public
# literature (docs/recipes.md): the preset's size, data and steps stay
RECIPES = {
    "gpt2": {},
    "modern": dict(rope=True, qk_norm=True, mlp="relu2", zero_init_proj=True, optimizer="muon", muon_lr=0.02,
                   max_lr=3e-3, min_lr=0.0, weight_decay=0.0, schedule="wsd", decay_frac=0.4),
}

MODEL_FIELDS = tuple(f.name for f in fields(TrainConfig) if f.name in GPTConfig.__dataclass_fields__)  # its shape
# the fields a resumed run must share with its checkpoint: they fix the model, its optimizer's state, the data order
RESUME_FIELDS = MODEL_FIELDS + ("optimizer", "batch_size", "seq_len", "total_batch_size")
DEFAULTS = TrainConfig()  # what a checkpoint written before a field existed had, in effect
# flags that tune a feature, and the field that switches it on (a flag given while it is off gets a note)
TUNES = {"val_steps": "val_every", "hellaswag_limit": "hellaswag_every", "hellaswag_data": "hellaswag_every",
         "sample_prompt": "sample_every", "num_samples": "sample_every", "sample_len": "sample_every",
         "wandb_run": "wandb", "muon_lr": "optimizer", "decay_frac": "schedule"}
ON = {"optimizer": "muon", "schedule": "wsd"}  # the value that switches these on; the others: any but 0 or ""


def preset_config(name: str) -> TrainConfig:
    """A preset's configuration (a copy: the table's own stays as it is)."""
    return replace(PRESETS[name])


def apply_recipe(cfg: TrainConfig, recipe: str) -> TrainConfig:
    """The preset's configuration, trained with a recipe."""
    return replace(cfg, recipe=recipe, **RECIPES[recipe])


def model_config(cfg: TrainConfig) -> GPTConfig:
    return GPTConfig(**{k: getattr(cfg, k) for k in MODEL_FIELDS})


def saved_config(ckpt: dict, name: str):
    """A field of the configuration saved in a checkpoint (its default for a field newer than the checkpoint)."""
    return ckpt["config"].get(name, getattr(DEFAULTS, name))


def check_config(cfg: TrainConfig, world_size: int = 1) -> None:
    """Raise ValueError, with the flag to change, for values that can't work together."""
    model_config(cfg)  # GPTConfig checks its own fields
    for f in fields(cfg):  # NaN passes every comparison below, and inf is no learning rate or weight decay
        if isinstance(getattr(cfg, f.name), float) and not math.isfinite(getattr(cfg, f.name)):
            raise ValueError(f"--{f.name.replace('_', '-')} must be a finite number, got {getattr(cfg, f.name)}")
    for name in ("batch_size", "seq_len", "total_batch_size", "max_steps", "max_lr", "muon_lr"):
        if getattr(cfg, name) <= 0:
            raise ValueError(f"--{name.replace('_', '-')} must be positive, got {getattr(cfg, name)}")
    for name in ("warmup_steps", "min_lr", "weight_decay", "grad_clip", "val_every", "val_steps", "hellaswag_every",
                 "hellaswag_limit", "sample_every", "num_samples", "sample_len", "checkpoint_every", "keep_checkpoints"):
        if getattr(cfg, name) < 0:
            raise ValueError(f"--{name.replace('_', '-')} can't be negative, got {getattr(cfg, name)}")
    if not -2**63 <= cfg.seed < 2**64:  # what torch.manual_seed takes
        raise ValueError(f"--seed must fit in 64 bits, got {cfg.seed}")
    if cfg.seq_len > cfg.block_size and not cfg.init_from:  # with --init-from, the context is the model's
        raise ValueError(f"--seq-len {cfg.seq_len} is longer than the model's context --block-size {cfg.block_size}")
    tokens_per_micro_step = cfg.batch_size * cfg.seq_len * world_size
    if cfg.total_batch_size % tokens_per_micro_step != 0:
        raise ValueError(f"--total-batch-size {cfg.total_batch_size} must be a multiple of --batch-size x "
                         f"--seq-len x processes = {cfg.batch_size} x {cfg.seq_len} x {world_size} "
                         f"= {tokens_per_micro_step}")
    if cfg.val_every and not cfg.val_steps:
        raise ValueError("--val-steps 0 measures no val batch: give it one or more, or turn val off: --val-every 0")
    if cfg.sample_every and not (cfg.num_samples and cfg.sample_len):
        raise ValueError(f"--num-samples {cfg.num_samples} --sample-len {cfg.sample_len} draws no text: give both one "
                         "or more, or turn samples off: --sample-every 0")
    if (cfg.sample_every or cfg.hellaswag_every) and cfg.vocab_size < N_VOCAB:
        raise ValueError(f"--vocab-size {cfg.vocab_size} is smaller than GPT-2's {N_VOCAB:,}, whose tokens the "
                         "samples and HellaSwag feed the model: turn them off (--sample-every 0 --hellaswag-every 0)")
    if cfg.warmup_steps > cfg.max_steps:
        raise ValueError(f"--warmup-steps {cfg.warmup_steps} is more than --max-steps {cfg.max_steps}")
    if cfg.min_lr > cfg.max_lr:
        raise ValueError(f"--min-lr {cfg.min_lr} is above --max-lr {cfg.max_lr}")
    if not 0 < cfg.decay_frac <= 1:
        raise ValueError(f"--decay-frac must be in (0, 1], got {cfg.decay_frac}")
    if cfg.fsdp and cfg.optimizer == "muon":
        raise ValueError("--optimizer muon orthogonalises whole weight matrices, which --fsdp splits across the "
                         "processes: leave out --fsdp (each process then holds the whole model), or use --optimizer adamw")
    # float32 weights, built in this machine's memory whatever the device, by each of its processes (--init-from: later)
    n_params, procs = model_config(cfg).num_params(), int(os.environ.get("LOCAL_WORLD_SIZE", 1))
    if not cfg.init_from and 4 * n_params * procs > host_memory():
        raise ValueError(f"the model would have {n_params:,} parameters, {4 * n_params / 1e9:,.1f} GB in float32 "
                         f"x {procs} process(es): more than this machine's {host_memory() / 1e9:,.1f} GB of memory "
                         "(--n-layer, --n-embd, --vocab-size, --block-size)")
    if cfg.init_from and not model_config(cfg).is_gpt2:
        raise ValueError(f"--init-from {cfg.init_from} loads GPT-2's architecture: it can't have --rope, --qk-norm, "
                         "--mlp relu2 or --logit-softcap (with --recipe modern, pass --no-rope --no-qk-norm --mlp gelu "
                         "--logit-softcap 0 to keep its optimizer and schedule only)")


def parse_config(argv=None) -> TrainConfig:
    """Flags -> TrainConfig: the preset's values first, then the recipe's, then every flag given explicitly."""
    pre = argparse.ArgumentParser(add_help=False)
    pre.add_argument("--preset", default="seed", choices=PRESETS)
    pre.add_argument("--recipe", default="gpt2", choices=RECIPES)
    known, _ = pre.parse_known_args(argv)
    defaults = apply_recipe(preset_config(known.preset), known.recipe)
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    choices = {"preset": tuple(PRESETS), "recipe": tuple(RECIPES)}
    for f in fields(TrainConfig):  # one flag per field: --max-steps for max_steps, its type from the default
        default = getattr(defaults, f.name)
        shown = " (default: %(default)s)" if default != "" else ""  # an empty default: the help says what it means
        kw = dict(default=default, help=f.metadata["help"] + shown)
        if isinstance(default, bool):
            kw["action"] = argparse.BooleanOptionalAction  # --resume / --no-resume
        else:
            kw["type"] = type(default)
            kw["metavar"] = {int: "N", float: "X", str: "STR"}[type(default)]
        if f.name in choices or "choices" in f.metadata:
            kw["choices"] = choices.get(f.name) or f.metadata["choices"]
            kw.pop("metavar", None)  # let argparse list the choices
        p.add_argument("--" + f.name.replace("_", "-"), **kw)
    cfg = TrainConfig(**vars(p.parse_args(argv)))
    try:
        check_config(cfg, world_size=int(os.environ.get("WORLD_SIZE", 1)))
    except ValueError as e:
        raise SystemExit(f"error: {e}") from None  # one line, no traceback, exit status 1
    for action in p._actions:  # without defaults, the parser returns only the flags on the command line
        action.default = argparse.SUPPRESS
    given = vars(p.parse_args(argv)) if os.environ.get("RANK", "0") == "0" else {}  # the first process notes
    for name, switch in TUNES.items():
        value, flag = getattr(cfg, switch), "--" + switch.replace("_", "-")
        off = f"{flag} {value}" if value != "" else f"no {flag}"
        if name in given and not (value == ON[switch] if switch in ON else value):
            print(f"note: --{name.replace('_', '-')} does nothing with {off}")
    return cfg

# -----------------------------------------------------------------------------
# data


def make_loaders(cfg: TrainConfig, rank: int, world_size: int) -> tuple[DataLoaderLite, DataLoaderLite]:
    """The train and val loaders; a missing or bad shard stops the run with one line, before it changes anything.
    Notes say where the shards are from an unfinished fineweb.py job, name the shards left out, and say where
    --val-steps reads some val batches twice."""
    try:
        loaders = tuple(DataLoaderLite(cfg.data_dir, split, cfg.batch_size, cfg.seq_len, rank, world_size,
                                       cfg.vocab_size) for split in ("train", "val"))
    except ShardError as e:
        raise SystemExit(f"error: {e}") from None
    if rank == 0 and unfinished(cfg.data_dir):
        print(f"note: {cfg.data_dir} is from a fineweb.py job that has not reached the end of its input: training "
              f"reads the {len(loaders[0].shards)} train shards written so far (run the same fineweb.py again to finish)")
    for path in (loaders[0].skipped + loaders[1].skipped) if rank == 0 else []:
        print(f"note: {path} left out: it holds fewer tokens than one batch")
    if rank == 0 and cfg.val_every and math.ceil(cfg.val_steps / world_size) > loaders[1].rounds:
        print(f"note: the val shards hold {loaders[1].rounds * world_size:,} batches of {cfg.batch_size} x "
              f"{cfg.seq_len}: the {cfg.val_steps} of --val-steps read some of them twice")
    return loaders

# -----------------------------------------------------------------------------
# model


def load_pretrained(cfg: TrainConfig, master: bool = True, world_size: int = 1) -> GPT:
    """The model of --init-from, through transformers; cfg's shape fields are set to its shape (they are
    saved with the checkpoints, and a resumed run checks them). The first process fetches it into the Hugging
    Face cache while the others wait, then they read that copy."""
    def load():
        try:
            return GPT.from_pretrained(cfg.init_from)
        except (ImportError, OSError, ValueError) as e:  # no transformers; no network and no cached copy; ...
            raise SystemExit(f"error: cannot load --init-from {cfg.init_from}: {one_line(e)}") from None
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


def build_model(cfg: TrainConfig, device: str, world_size: int, pretrained: GPT | None) -> tuple[GPT, torch.nn.Module]:
    """(model, train_model). model is our GPT (under --fsdp its weights sharded): evaluation, sampling and
    checkpoints use it. train_model is what a training step calls: the same model, wrapped by DDP when several
    processes each hold a whole copy, compiled with --compile. Every process starts from the same weights."""
    with out_of_memory_in_one_line("this machine"):  # built in its memory, whatever the device
        model = pretrained or GPT(model_config(cfg))
    with out_of_memory_in_one_line(device):
        model = model.to(device)
    train_model = model
    if cfg.fsdp:  # each process keeps 1/world_size of the weights, gradients and optimizer state
        model = train_model = shard_model(model, device)  # in place: still our GPT, its weights sharded
    elif world_size > 1:  # each process keeps a whole copy; DDP averages the gradients in backward
        train_model = DDP(model, device_ids=[torch.device(device).index] if device.startswith("cuda") else None)
    if cfg.compile:  # for the training steps only: val, HellaSwag and sampling (other shapes, no gradients) run as is
        train_model = compiled(train_model, device, autocast_dtype(device.split(":")[0], cfg.dtype))
    return model, train_model

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
        fused = device_type in ("cuda", "cpu", "mps")  # one kernel for the whole update instead of one per tensor
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
    ns_dtype = torch.bfloat16 if device_type == "cuda" and native_bf16("cuda") else None  # else float32
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
# evaluation


@torch.no_grad()
def evaluate_val(model: torch.nn.Module, loader: DataLoaderLite, steps: int, device: str,
                 dtype: torch.dtype) -> float:
    """Mean loss over the first `steps` val batches, all processes together: the same tokens every time for a
    given number of processes (`steps` rounded up to a multiple of it)."""
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
        dist.all_reduce(total, op=dist.ReduceOp.AVG)
    model.train()
    return (total / steps).item()


# -----------------------------------------------------------------------------
# checkpoints: write one, or continue from one


def write_checkpoint(step: int, *, events_done: bool, cfg: TrainConfig, model: GPT, optimizer: torch.optim.Optimizer,
                     loader: DataLoaderLite, logger: Logger, device: str, world_size: int) -> str:
    """Everything needed to continue the run at `step` exactly as if it had never stopped. Every process
    calls it (under FSDP they gather the state together); process 0 writes it and the others wait, so
    that none goes on, or exits, before the checkpoint is on disk. events_done: whether the step's
    evaluations are done (a resumed run doesn't redo them)."""
    path = checkpoint_path(cfg.out_dir, step)
    model_state, optim_state = full_state(model, optimizer, cfg.fsdp)  # {} on all but process 0
    error, master = None, logger.enabled  # process 0: the one that logs, and writes the checkpoint
    if master and not all(torch.isfinite(t).all() for t in model_state.values()):
        error = (f"error: the weights hold NaN or inf at step {step}: no checkpoint written, "
                 f"the earlier ones in {cfg.out_dir} are intact")
    elif master:
        rng = {"cpu": torch.get_rng_state()}
        if device.startswith("cuda"):
            rng["cuda"] = torch.cuda.get_rng_state(device)
        try:
            save_checkpoint(path, {
                "model": model_state, "optimizer": optim_state, "step": step, "events_done": events_done,
                "config": asdict(cfg), "train_loader": loader.state_dict(), "rng": rng,
                "log_bytes": logger.size(), "world_size": world_size})
            prune_checkpoints(cfg.out_dir, cfg.keep_checkpoints, written=path)
        except CheckpointError as e:
            error = f"error: {e}; the earlier checkpoints in {cfg.out_dir} are intact"
    # process 0's verdict, to all: a barrier, and if it failed, all stop
    if any_process(error is not None, device) and error is None:
        error = f"error: process 0 could not write {path}: see its message"
    if error:
        raise SystemExit(error)
    return path


def check_resume(cfg: TrainConfig, found: tuple[str, dict] | None, device: str, world_size: int) -> None:
    """Stop with one line, before the data, HellaSwag and the model are loaded (all but an --init-from model,
    whose shape it compares) and before anything is changed, if the checkpoint found to continue
    (checkpoint_to_resume) doesn't fit this run."""
    # each process reads --out-dir itself: on several machines it must be a folder they share
    if not same_in_every_process(found[1]["step"] if found else -1, device):
        raise SystemExit(f"error: the processes found different checkpoints in --out-dir {cfg.out_dir}: on "
                         "several machines, make it a folder they all share; nothing was changed")
    if not found:
        return
    path, ckpt = found
    mismatched = [k for k in RESUME_FIELDS if saved_config(ckpt, k) != getattr(cfg, k)]
    if mismatched:
        diff = ", ".join(f"--{k.replace('_', '-')} {saved_config(ckpt, k)} (now {getattr(cfg, k)})" for k in mismatched)
        preset = saved_config(ckpt, "preset")
        started = f" (started with --preset {preset})" if preset != cfg.preset else ""
        raise SystemExit(f"error: {path} belongs to a different run{started}: it has {diff}; resume it with the "
                         "command that started it, plus --resume")
    written_by = ckpt.get("world_size", 1)  # older checkpoints: always one process
    if written_by != world_size:
        raise SystemExit(f"error: {path} was written by {written_by} process(es), this run has {world_size}: "
                         f"resume it with {written_by} (the position in the training data depends on their "
                         "number); nothing was changed")
    if ckpt["step"] > cfg.max_steps:
        raise SystemExit(f"error: {path} is at step {ckpt['step']}, past --max-steps {cfg.max_steps}: nothing to do")


def resume(cfg: TrainConfig, found: tuple[str, dict] | None, model: GPT, optimizer: torch.optim.Optimizer,
           loader: DataLoaderLite, logger: Logger, device: str) -> tuple[int, bool]:
    """(first step, whether its evaluations are done): (0, False) for a new run. With --resume, the state of
    the checkpoint found (checked by check_resume) is loaded (model, optimizer, data position, RNG) and the log
    cut back to where it was written."""
    if not found:
        if cfg.resume and logger.enabled:
            print(f"no checkpoint in {cfg.out_dir} yet: starting a new run")
        logger.start_new()  # a new run, a new log (an earlier one kept beside it)
        return 0, False
    path, ckpt = found
    try:  # weights that don't fit the config saved beside them (an edited checkpoint): one line
        load_full_state(model, optimizer, ckpt, cfg.fsdp)
    except (RuntimeError, ValueError, KeyError) as e:
        if isinstance(e, (torch.OutOfMemoryError, dist.DistError)):  # the machine's problem, not the checkpoint's
            raise
        raise SystemExit(f"error: {path} can't be resumed by this model: {one_line(e, whole=True, limit=300)}") from None
    try:
        loader.load_state_dict(ckpt["train_loader"])
    except ShardError as e:
        raise SystemExit(f"error: {e}") from None
    torch.set_rng_state(ckpt["rng"]["cpu"])
    if device.startswith("cuda") and "cuda" in ckpt["rng"]:
        torch.cuda.set_rng_state(ckpt["rng"]["cuda"], device)
    # a middle checkpoint that --max-steps makes the last step: its evaluations "at the end" are all done again
    at_new_end = ckpt["step"] == cfg.max_steps != saved_config(ckpt, "max_steps")
    # the log as it was when the checkpoint was written (less the step's evaluations, to be done again)
    logger.truncate(ckpt["log_bytes"], redo=ckpt["step"] if at_new_end else None)
    if logger.enabled:
        print(f"resumed from {path} at step {ckpt['step']}")
    return ckpt["step"], ckpt.get("events_done", True) and not at_new_end

# -----------------------------------------------------------------------------
# one training step


def train_step(*, model: torch.nn.Module, optimizer: torch.optim.Optimizer, loader: DataLoaderLite, grad_accum: int,
               step: int, cfg: TrainConfig, device: str, dtype: torch.dtype) -> dict:
    """One optimizer step: grad_accum micro-batches, their gradients averaged, then one update. Returns the
    step's metrics for the log: train_loss, lr, grad_norm, dt_ms, tok_per_s; or, for a non-finite loss
    with --skip-nonfinite, what was skipped."""
    device_type = device.split(":")[0]
    t0 = time.perf_counter()
    model.train()
    optimizer.zero_grad(set_to_none=True)
    loss_accum = torch.zeros((), device=device)
    for micro_step in range(grad_accum):
        x, y = (to_device(t, device) for t in loader.next_batch())
        with grad_sync(model, micro_step == grad_accum - 1, cfg.fsdp):  # across processes: on the last only
            with autocast(device_type, dtype):
                _, loss = model(x, y)
            loss = loss / grad_accum  # the mean over the whole batch, not a sum of means
            loss_accum += loss.detach()
            loss.backward()
    if dist.is_initialized():
        dist.all_reduce(loss_accum, op=dist.ReduceOp.AVG)
    norm = torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.grad_clip if cfg.grad_clip > 0 else float("inf"))
    # every process sees the same averaged loss and norm, so they all make the same choice here
    train_loss, grad_norm = loss_accum.item(), norm.item()  # one device-to-host copy each
    if not (math.isfinite(train_loss) and math.isfinite(grad_norm)):
        if not cfg.skip_nonfinite:
            raise SystemExit(f"error: non-finite loss {train_loss} (gradient norm {grad_norm}) at step {step}: "
                             "stopped before the update; resume from the last checkpoint with a lower --max-lr, "
                             "or pass --skip-nonfinite")
        optimizer.zero_grad(set_to_none=True)
        return {"skipped": "non-finite loss", "loss": str(train_loss), "grad_norm": str(grad_norm)}
    lr = get_lr(step, cfg)
    for group in optimizer.param_groups:
        group["lr"] = lr * group.get("lr_scale", 1.0)  # Muon's matrices: their own peak, the same schedule
    optimizer.step()
    synchronize(device)  # the step's time, not the time to queue its kernels
    dt = time.perf_counter() - t0
    return {"train_loss": train_loss, "lr": lr, "grad_norm": grad_norm, "dt_ms": dt * 1000,
            "tok_per_s": cfg.total_batch_size / dt}

# -----------------------------------------------------------------------------
# the loop


def main(argv=None) -> None:
    cfg = parse_config(argv)

    # distributed setup: one process, or one per device under torchrun
    local_rank = int(os.environ.get("LOCAL_RANK", 0))  # the process's number on its machine (torchrun sets it)
    device = pick_device(cfg.device, local_rank)  # each process binds its own GPU before they connect
    rank, world_size = setup_distributed(device, cfg.fsdp)
    master = rank == 0  # only this process prints, logs, writes checkpoints and samples (under FSDP all sample)
    print0 = print if master else (lambda *a, **k: None)
    device_type = device.split(":")[0]
    dtype = autocast_dtype(device_type, cfg.dtype)  # of the forward passes; weights and updates stay float32
    configure_for_training(device_type)
    torch.manual_seed(cfg.seed)
    # the checkpoint to continue, first: a forgotten --resume stops here, another run's checkpoint in check_resume,
    # both before anything slow but an --init-from model
    found = checkpoint_to_resume(cfg.out_dir, cfg.resume)  # (path, contents), or None: a new run
    # with --init-from the model's shape is the pretrained one's: set in cfg before the data and model read it
    pretrained = load_pretrained(cfg, master, world_size) if cfg.init_from else None
    check_resume(cfg, found, device, world_size)  # after --init-from has set the model's shape
    logger = Logger(cfg.out_dir, master, cfg.wandb, cfg.wandb_run)  # creates --out-dir, or stops if it can't be written
    if master:
        remove_partial_checkpoints(cfg.out_dir)  # what a crash left half-written

    # data: each optimizer step averages the gradients of grad_accum micro-batches of B x T tokens per process
    grad_accum = cfg.total_batch_size // (cfg.batch_size * cfg.seq_len * world_size)
    train_loader, val_loader = make_loaders(cfg, rank, world_size)
    enc = get_encoding() if cfg.hellaswag_every or cfg.sample_every else None  # a second or two to build
    hellaswag_examples = hellaswag.examples_for_training(cfg.hellaswag_data, cfg.hellaswag_limit, enc, cfg.block_size,
                                                         master, world_size) if cfg.hellaswag_every else None

    # model, optimizer, and the state of a run to continue
    model, train_model = build_model(cfg, device, world_size, pretrained)
    optimizer = configure_optimizer(model, cfg, device_type)
    start_step, events_done = resume(cfg, found, model, optimizer, train_loader, logger, device)
    save = partial(write_checkpoint, cfg=cfg, model=model, optimizer=optimizer, loader=train_loader, logger=logger,
                   device=device, world_size=world_size)
    logger.log(start_step, event="resume" if found else "start", **(run_info(cfg, device, world_size) if master else {}))
    print0(f"model: {model.num_params():,} parameters | device {device} | autocast {dtype} | "
           f"{world_size} process(es) | {grad_accum} micro-steps of {cfg.batch_size} x {cfg.seq_len} per step")

    def due(every: int, step: int) -> bool:  # every N steps and at the last one; 0: never
        return every > 0 and (step % every == 0 or step == cfg.max_steps)

    eta, stopped = ETA(cfg.max_steps), False
    with StopSignals() as signals:
        for step in range(start_step, cfg.max_steps + 1):
            last_step = step == cfg.max_steps
            # a resumed run's first step did its evaluations, samples and checkpoint before the run stopped
            done_before = step == start_step and events_done
            if not last_step and signals.stop(device):  # Ctrl-C or SIGTERM: a checkpoint, then out
                logger.log(step, event="stop", signal=signals.name)
                path = save(step, events_done=done_before)
                print0(f"stopped by {signals.name} before step {step}: {path} written; to continue, "
                       "run the same command with --resume")
                stopped = True
                break
            # once in a while: evaluate, sample, checkpoint
            if not done_before:
                if due(cfg.val_every, step):
                    val_loss = evaluate_val(model, val_loader, cfg.val_steps, device, dtype)
                    print0(f"step {step:5d} | val loss {val_loss:.4f}")
                    logger.log(step, val_loss=val_loss)
                if due(cfg.hellaswag_every, step):  # every process scores its share of the examples
                    hs = hellaswag.evaluate(model, hellaswag_examples, enc, device, dtype, rank=rank,
                                            world_size=world_size, progress=master, equal_shares=cfg.fsdp)
                    print0(f"step {step:5d} | hellaswag acc_norm {hs['acc_norm']:.4f} | acc {hs['acc']:.4f} | "
                           f"n {hs['n']}")
                    logger.log(step, hellaswag_acc_norm=hs["acc_norm"], hellaswag_acc=hs["acc"], hellaswag_n=hs["n"])
                if due(cfg.sample_every, step) and (master or cfg.fsdp):  # under FSDP all take part in each forward
                    samples = sample_text(model, enc, cfg.sample_prompt, cfg.num_samples, cfg.sample_len,
                                          top_k=50, seed=42, device=device, dtype=dtype)
                    for s in samples:
                        print0(f"sample: {s!r}")
                    logger.log(step, samples=samples)
                if step > 0 and due(cfg.checkpoint_every, step):
                    print0(f"step {step:5d} | checkpoint {save(step, events_done=True)}")
            if last_step:  # the weights after max_steps updates are evaluated and saved: nothing left to train
                break
            # a single training step
            seconds_left = eta.seconds(step)
            metrics = train_step(model=train_model, optimizer=optimizer, loader=train_loader, grad_accum=grad_accum,
                                 step=step, cfg=cfg, device=device, dtype=dtype)
            print0(step_line(step, metrics, seconds_left))
            logger.log(step, **metrics)
            eta.step_done(step)
    logger.finish()
    if world_size > 1:
        # DDP's and FSDP's hooks hold the process group in reference cycles: collect them while Python is whole,
        # or gloo's threads are torn down at interpreter exit, which can abort the process
        del model, train_model, optimizer, save
        gc.collect()
        dist.destroy_process_group()
    if stopped and signals.received == signal.SIGINT:
        raise SystemExit(130)  # SIGTERM: exit status 0, so a scheduler sees a clean pre-emption


if __name__ == "__main__":
    try:
        main()
    except KeyboardInterrupt:  # Ctrl-C before the loop (whose own handler takes it) or after: no traceback
        raise SystemExit(130) from None
