"""
Checkpoint files: written atomically with a checksum, loaded safely, found, pruned, and turned back into a model.

A checkpoint is one torch.save'd dict, ckpt_<step>.pt in a run's --out-dir: the model's and the optimizer's
state, the step, the run's config, the data loader's position, the RNG state and the log's length (see
train_gpt.write_checkpoint). Every script that reads one comes through here:

    from checkpoint import open_checkpoint, model_from_checkpoint
    path, ckpt = open_checkpoint("log/")      # a file, or a run folder's latest good checkpoint
    model = model_from_checkpoint(ckpt)       # the GPT it holds, built from its saved config

What can go wrong, and what we do:
- a write cut short (kill -9, a full disk): the file is written beside its name and renamed when whole
  (atomic_write), so a checkpoint on disk is always complete;
- a flipped bit: torch.load doesn't check the data it reads, so every checkpoint carries a CRC32 of its
  contents, checked on load;
- a file that would run code: loaded with weights_only=True (tensors and plain containers only); one that
  holds pickled Python objects is refused, saying so.
"""

import glob
import os
import re
import sys
import zipfile
import zlib
from dataclasses import fields

import torch

from atomic_write import atomic_write
from errors import one_line, os_reason
from model import GPT, GPTConfig

# also "world_size" (the number of processes that wrote it; absent in older checkpoints, all from one process)
# and "events_done" (absent: True)
CHECKPOINT_KEYS = {"model", "optimizer", "step", "config", "train_loader", "rng", "log_bytes", "checksum"}


class CheckpointError(Exception):
    """A checkpoint that can't be used: damaged, not ours, or unsafe to load."""


class UnsafeCheckpointError(CheckpointError):
    """A checkpoint that holds pickled Python objects: loading it could run code."""

# -----------------------------------------------------------------------------
# finding them


def checkpoint_path(out_dir: str, step: int) -> str:
    return os.path.join(out_dir, f"ckpt_{step:06d}.pt")


def checkpoint_step(path: str) -> int | None:
    """The step in a checkpoint's name (ckpt_<step>.pt), or None for another name (a temporary file)."""
    m = re.fullmatch(r"ckpt_(\d+)\.pt", os.path.basename(path))
    return int(m.group(1)) if m else None


def list_checkpoints(out_dir: str) -> list[str]:
    """The checkpoints (ckpt_<step>.pt) in out_dir, newest first; temporary files don't match."""
    paths = glob.glob(os.path.join(glob.escape(out_dir), "ckpt_*.pt"))  # escape: a folder named run[1]
    return sorted((p for p in paths if checkpoint_step(p) is not None), key=checkpoint_step, reverse=True)


def latest_checkpoint(out_dir: str) -> str | None:
    """The checkpoint with the highest step in out_dir, or None."""
    return next(iter(list_checkpoints(out_dir)), None)


def prune_checkpoints(out_dir: str, keep: int, written: str | None = None) -> None:
    """Delete all but the `keep` newest checkpoints (keep=0: delete none), counting from `written`, the one just
    written (default: the newest). Those past it are damaged ones a resumed run skipped: counted, they would
    have it deleted, and every good checkpoint with it. They stay until the run writes their step again."""
    checkpoints = list_checkpoints(out_dir) if keep > 0 else []
    if checkpoints:
        step = checkpoint_step(written or checkpoints[0])
        for path in [p for p in checkpoints if checkpoint_step(p) < step][keep - 1:]:
            try:
                os.remove(path)
            except FileNotFoundError:
                pass
            except OSError as e:  # open in another program (Windows), the folder gone read-only: the run goes on
                print(f"warning: cannot remove {path} (--keep-checkpoints): {os_reason(e)}", file=sys.stderr)


def remove_partial_checkpoints(out_dir: str) -> None:
    """Delete what a write cut short by a crash left behind (ckpt_<step>.pt.tmp)."""
    for tmp in glob.glob(os.path.join(glob.escape(out_dir), "ckpt_*.pt.tmp")):
        os.remove(tmp)

# -----------------------------------------------------------------------------
# writing and reading one


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


def save_checkpoint(path: str, state: dict) -> None:
    """Write state with its checksum, atomically. If the write fails (a full disk), the temporary file goes,
    the earlier checkpoints stay as they were, and CheckpointError gives the OS's reason."""
    state = {**state, "checksum": state_checksum(state)}
    try:
        with atomic_write(path) as tmp, open(tmp, "wb") as f:
            torch.save(state, f)
    except (OSError, RuntimeError) as e:  # torch.save wraps the OS's error in a RuntimeError
        raise CheckpointError(f"cannot write checkpoint {path}: {os_reason(e)}") from None


def load_checkpoint(path: str) -> dict:
    """A checkpoint's contents, checked. weights_only=True unpickles tensors and plain containers only,
    so a checkpoint can't run code. Raises CheckpointError with the reason on one line."""
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=True)
    except FileNotFoundError:
        raise CheckpointError(f"checkpoint {path} not found") from None
    except OSError as e:  # a path through a file (ckpt.pt/), a folder, no permission: the OS's reason
        raise CheckpointError(f"cannot read checkpoint {path}: {os_reason(e)}") from None
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
    """A checkpoint file, or the latest good checkpoint of a run folder, loaded. SystemExit on failure."""
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


def model_from_checkpoint(ckpt: dict, name: str = "the checkpoint") -> GPT:
    """The model a checkpoint holds, built from the configuration saved with it. A field of GPTConfig newer
    than the checkpoint takes its default, which is what the code that wrote it computed. SystemExit, one
    line, for a configuration this code can't build or weights that don't fit it."""
    saved = ckpt["config"]
    try:
        model = GPT(GPTConfig(**{f.name: saved[f.name] for f in fields(GPTConfig) if f.name in saved}))
    except (TypeError, ValueError) as e:
        raise SystemExit(f"error: {name} holds a configuration this code can't build: {one_line(e)}") from None
    try:
        model.load_state_dict(ckpt["model"])
    except RuntimeError as e:  # missing, unexpected or differently shaped tensors
        reason = one_line(e, whole=True, limit=300)
        raise SystemExit(f"error: the weights in {name} don't fit its configuration: {reason}") from None
    return model


def checkpoint_to_resume(out_dir: str, resume: bool) -> tuple[str, dict] | None:
    """The checkpoint a training run in out_dir continues: with --resume, the latest one that loads (None if
    there is none yet: a new run); without, None. SystemExit, with nothing changed, for a new run in a folder
    of checkpoints (a finished run is never overwritten), or for --resume where none of them loads."""
    if not resume:
        if latest_checkpoint(out_dir):
            raise SystemExit(f"error: {out_dir} holds checkpoints of an earlier run: continue it with --resume, "
                             "or choose another --out-dir")
        return None
    try:
        found = load_latest_checkpoint(out_dir)
    except CheckpointError as e:  # one that is unsafe to load
        raise SystemExit(f"error: {e}") from None
    if not found and latest_checkpoint(out_dir):
        raise SystemExit(f"error: no checkpoint in {out_dir} can be loaded (see the warnings above); "
                         "nothing was changed")
    return found
