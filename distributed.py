"""
Several processes training one model: torchrun's setup, FSDP2 sharding, and the whole training state of a
sharded model gathered into one process (for a checkpoint) and scattered back (on resume).

One process needs none of it: without torchrun (no RANK in the environment) setup_distributed returns
(0, 1) and train_gpt.py runs as a plain script. Under torchrun, DDP keeps a whole copy of the model in each
process and averages the gradients; FSDP (--fsdp) splits weights, gradients and optimizer state across them.
"""

import os
from contextlib import nullcontext

import torch
import torch.distributed as dist

from model import GPT


def setup_distributed(device: str, fsdp: bool = False) -> tuple[int, int]:
    """(rank, world_size): one process, (0, 1), unless launched by torchrun, which sets RANK. The processes
    talk through NCCL between GPUs and through gloo between CPU processes. fsdp: --fsdp, which needs torchrun."""
    if "RANK" not in os.environ:
        if fsdp:
            raise SystemExit("error: --fsdp shards the model across processes started by torchrun: "
                             "torchrun --standalone --nproc_per_node=N train_gpt.py --fsdp ...")
        return 0, 1
    device_type = device.split(":")[0]
    if device_type == "mps":
        raise SystemExit("error: --device mps runs in one process only: start train_gpt.py without torchrun")
    if device_type == "cuda":
        dist.init_process_group(backend="nccl", device_id=torch.device(device))
    else:
        dist.init_process_group(backend="gloo")
    return dist.get_rank(), dist.get_world_size()


def any_process(flag: bool, device: str) -> bool:
    """Whether flag is true in any process (all of them must call it): the processes decide together."""
    return bool(largest(int(flag), device))


def largest(value: int, device: str) -> int:
    """The largest of value over the processes (all of them must call it)."""
    if not dist.is_initialized():
        return value
    t = torch.tensor(value, device=device)
    dist.all_reduce(t, op=dist.ReduceOp.MAX)
    return int(t.item())


def same_in_every_process(value: int, device: str) -> bool:
    """Whether every process holds the same value (all of them must call it)."""
    if not dist.is_initialized():
        return True
    t = torch.tensor([value, -value], device=device)
    dist.all_reduce(t, op=dist.ReduceOp.MAX)  # (largest, -smallest)
    return t[0].item() == -t[1].item()


def grad_sync(model: torch.nn.Module, last: bool, fsdp: bool):
    """The context of a micro-step's forward and backward: its gradients are averaged across processes only on
    the last micro-step of an optimizer step (last), where DDP all-reduces them and FSDP reduce-scatters them,
    each process keeping the mean of its own shard. One process: nothing to do."""
    if fsdp:
        model.set_requires_gradient_sync(last)
    elif not last and hasattr(model, "no_sync"):  # DDP (compiled or not: the compiled module passes it on)
        return model.no_sync()
    return nullcontext()


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

# Under FSDP, a checkpoint is still one file in one format: the whole state, gathered on process 0, exactly
# what a plain model and optimizer would save. It loads in one process, and resumes with or without --fsdp.


def full_state(model: torch.nn.Module, optimizer: torch.optim.Optimizer, fsdp: bool) -> tuple[dict, dict]:
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


def load_full_state(model: torch.nn.Module, optimizer: torch.optim.Optimizer, ckpt: dict, fsdp: bool) -> None:
    """The inverse of full_state: every process loads the checkpoint's whole state and keeps its own shards.
    The optimizer's settings (weight decay, Muon's lr_scale, fused, ...) stay this run's: its flags, not the
    saved ones. They go in before the load, which places AdamW's step counts by them (with fused, on the
    weights' device): a checkpoint of a Mac's unfused AdamW left them on the CPU for a GPU's fused kernel."""
    settings = [{k: v for k, v in group.items() if k != "params"} for group in optimizer.param_groups]
    saved = ckpt["optimizer"]
    if len(saved["param_groups"]) == len(settings):  # (else torch's load refuses it, naming the difference)
        groups = [{**group, **own} for group, own in zip(saved["param_groups"], settings)]
        ckpt = {**ckpt, "optimizer": {**saved, "param_groups": groups}}
    if not fsdp:
        model.load_state_dict(ckpt["model"])
        optimizer.load_state_dict(ckpt["optimizer"])
    else:
        load_sharded_state(model, optimizer, ckpt)
    for group, own in zip(optimizer.param_groups, settings):
        group.update(own)


def load_sharded_state(model: torch.nn.Module, optimizer: torch.optim.Optimizer, ckpt: dict) -> None:
    """load_full_state under FSDP: the optimizer's state, saved by position, is keyed by parameter name."""
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
