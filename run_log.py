"""
What a training run writes and prints: log.jsonl, one JSON object per event (the run's config, versions and
hardware first, then each step's metrics, val losses, HellaSwag, samples), each step's line and its ETA.
One run at a time writes an out dir: the Logger holds a lock on log.jsonl until finish(), and a second run
started there stops with one line.

    logger = Logger("log", enabled=True)
    logger.log(7, train_loss=3.21, lr=6e-4)         # {"step": 7, "train_loss": 3.21, "lr": 0.0006}

With a Weights & Biases project (train_gpt.py --wandb PROJECT) the same events also go to W&B: the run
starts at the log's "start" event, with the run's config; a resumed run ("resume" event) continues the
same W&B run, whose id is kept in <out_dir>/wandb_id.
"""

import importlib.util
import json
import os
import platform
import subprocess
import sys
import time
import uuid
from dataclasses import asdict

import torch

from atomic_write import atomic_write
from errors import one_line


_LOCKED = {}  # log path -> the open file through which this process holds its lock


def lock_log(path: str) -> bool:
    """Lock path (a log) for this process, until Logger.finish() or its exit; False if another process holds it.
    True where the OS or the file system has no such locks (Windows, some network file systems)."""
    f = open(path, "a")  # an OSError here: the out dir can't be written
    key = os.path.realpath(path)
    if key in _LOCKED:  # this process already holds it (train_gpt.main run twice in one process)
        f.close()
        return True
    try:
        import fcntl
    except ImportError:
        f.close()
        return True
    try:
        fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        f.close()
        return False
    except OSError:  # a file system without locks: run unguarded
        f.close()
        return True
    _LOCKED[key] = f
    return True


class Logger:
    """Appends one JSON object per event to <out_dir>/log.jsonl and flushes it at once (first process only),
    which it locks against a second run in the same out dir (see lock_log)."""

    def __init__(self, out_dir: str, enabled: bool, wandb_project: str = "", wandb_name: str = ""):
        self.out_dir, self.path = out_dir, os.path.join(out_dir, "log.jsonl")
        self.enabled = enabled
        self.wandb_project, self.wandb_name, self.wandb = wandb_project, wandb_name, None
        if wandb_project and importlib.util.find_spec("wandb") is None:  # every process stops, not the first only
            raise SystemExit("error: --wandb needs the wandb package: pip install wandb")
        if enabled:
            try:
                os.makedirs(out_dir, exist_ok=True)
                locked = lock_log(self.path)  # opens the log: can we write there at all? Better to know now
            except OSError as e:
                raise SystemExit(f"error: cannot write to --out-dir {out_dir}: {e.strerror}") from None
            # one run at a time: a second would delete the first's half-written checkpoint, cut its log back and
            # write over its checkpoints
            if not locked:
                raise SystemExit(f"error: another run is writing to --out-dir {out_dir} (its log.jsonl is locked): "
                                 "wait for it to end, or choose another --out-dir")

    def log(self, step: int, **metrics) -> None:
        if not self.enabled:
            return
        try:
            with open(self.path, "a") as f:
                f.write(json.dumps({"step": step, **metrics}) + "\n")
        except OSError as e:
            raise SystemExit(f"error: cannot write {self.path}: {e.strerror}") from None
        if self.wandb_project:
            self.log_wandb(step, metrics)

    def log_wandb(self, step: int, metrics: dict) -> None:
        import wandb
        if metrics.get("event") in ("start", "resume"):
            id_path = os.path.join(self.out_dir, "wandb_id")
            resumed = metrics["event"] == "resume" and os.path.exists(id_path)
            run_id = open(id_path).read().strip() if resumed else ""
            if not run_id:  # a new run: a new W&B run, its id written whole or not at all
                run_id = uuid.uuid4().hex[:8]
                with atomic_write(id_path) as tmp, open(tmp, "w") as f:
                    f.write(run_id + "\n")
            try:
                self.wandb = wandb.init(project=self.wandb_project, name=self.wandb_name or None, id=run_id,
                                        resume="allow", dir=self.out_dir, config=metrics.get("config"))
            except wandb.Error as e:  # no API key, no network, a bad project name
                raise SystemExit(f"error: --wandb: W&B could not start the run: {one_line(e)} (or log offline: "
                                 "WANDB_MODE=offline, or leave out --wandb)") from None
            return
        if self.wandb is None:
            return
        data = {k: v for k, v in metrics.items() if isinstance(v, (int, float)) and not isinstance(v, bool)}
        if "samples" in metrics:
            data["samples"] = wandb.Table(columns=["step", "sample"], data=[[step, s] for s in metrics["samples"]])
        if data:
            self.wandb.log(data, step=step)

    def finish(self) -> None:
        """Close the W&B run, if any, and let another run have the log."""
        if self.wandb is not None:
            import wandb
            self.wandb.finish()
            wandb.teardown()  # wait for W&B's service to write everything out (else only at the process's exit)
            self.wandb = None
        held = _LOCKED.pop(os.path.realpath(self.path), None)
        if held:
            held.close()  # closing the file releases its lock

    def size(self) -> int:
        """The log's length, flushed to disk first: a checkpoint records it, and after a power cut must not
        outlive the lines it counts (the resumed run would append to half a line, the steps in between lost)."""
        if not os.path.exists(self.path):
            return 0
        if self.enabled and os.path.isfile(self.path):  # (a log sent to /dev/null has nothing to flush)
            try:
                with open(self.path, "a") as f:  # (Windows flushes only a file open for writing)
                    os.fsync(f.fileno())
            except OSError:  # best effort: a failing disk fails the checkpoint's own write next, which stops the run
                pass
        return os.path.getsize(self.path)

    def start_new(self) -> None:
        """A new run in this out dir: an earlier run's log (one that left no checkpoint to continue) is kept as
        log.<n>.jsonl, the first free n, if it logged a step or an evaluation; log.jsonl starts empty."""
        if not (self.enabled and os.path.isfile(self.path)):
            return
        with open(self.path, "rb") as f:
            earlier = f.read()
        # a run that stopped before its first step (a bad flag for W&B, out of memory) logged its start alone
        entries = [entry(line) for line in earlier.splitlines() if line.strip()]
        if any(e is None or "event" not in e for e in entries):
            n = 1
            while os.path.exists(kept := os.path.join(self.out_dir, f"log.{n}.jsonl")):
                n += 1
            try:  # copied whole or not at all, not renamed: this run's lock stays on log.jsonl (see lock_log)
                with atomic_write(kept) as tmp, open(tmp, "wb") as f:
                    f.write(earlier)
            except OSError as e:
                raise SystemExit(f"error: cannot keep the earlier run's log as {kept}: {e.strerror}; nothing was "
                                 "changed") from None
            print(f"note: {self.path} of an earlier run, which left no checkpoint, is kept as {kept}")
        self.truncate(0)

    def truncate(self, size: int, redo: int | None = None) -> None:
        """Forget what was logged after a checkpoint that a resumed run now redoes. redo: a step whose
        evaluations the run does again: its entries at the end of those size bytes go too (its events stay)."""
        if not (self.enabled and os.path.exists(self.path)):
            return
        events = b""
        if redo is not None:
            with open(self.path, "rb") as f:
                lines = f.read(size).splitlines(keepends=True)  # (fewer bytes in a log cut by hand)
            # the checkpoint came after its step's evaluations, and perhaps a stop and a resume around them
            tail = []
            while lines and (e := entry(lines[-1])) is not None and e.get("step") == redo:
                tail.insert(0, lines.pop())
            events = b"".join(line for line in tail if "event" in entry(line))
            size = sum(map(len, lines))  # where the kept lines end: never in the middle of one
        # never grow it (truncate() would pad with zero bytes); its length as is: nothing here needs it flushed
        if os.path.getsize(self.path) > size:
            with open(self.path, "r+b") as f:
                f.truncate(size)
                f.seek(size)
                f.write(events)


def entry(line: bytes) -> dict | None:
    """A line of the log as the dict this module wrote; None for a line it can't have written (edited by hand)."""
    try:
        e = json.loads(line)
    except (ValueError, RecursionError):
        return None
    return e if isinstance(e, dict) else None


def run_info(cfg, device: str, world_size: int) -> dict:
    """What a reader of the log needs to reproduce the run: config, code, versions, hardware."""
    info = {"config": asdict(cfg), "git": source_version(), "python": platform.python_version(),
            "torch": torch.__version__, "device": device, "world_size": world_size, "argv": sys.argv}
    if device.startswith("cuda"):
        info["gpu"], info["cuda"] = torch.cuda.get_device_name(device), torch.version.cuda
    return info


def source_version() -> str | None:
    """The git commit of this code, with "+dirty" if its tracked files differ from it; None outside a git
    checkout (a downloaded archive) or without git."""
    def git(*args: str) -> str:
        return subprocess.run(["git", *args], cwd=os.path.dirname(os.path.abspath(__file__)), capture_output=True,
                              text=True, timeout=30, check=True).stdout.strip()
    try:
        dirty = git("--no-optional-locks", "status", "--porcelain", "--untracked-files=no")  # (no index.lock taken)
        return git("rev-parse", "HEAD") + ("+dirty" if dirty else "")
    except (OSError, subprocess.SubprocessError):
        return None


def format_duration(seconds: float) -> str:
    """3725 -> '1h02m', 125 -> '2m05s', 42.4 -> '42s'."""
    s = int(round(seconds))
    if s >= 3600:
        return f"{s // 3600}h{s % 3600 // 60:02d}m"
    if s >= 60:
        return f"{s // 60}m{s % 60:02d}s"
    return f"{s}s"


class ETA:
    """Seconds to the last step at the pace of the steps so far, evaluations included. The first step of a
    process (warm-up, compilation) doesn't count."""

    def __init__(self, max_steps: int):
        self.max_steps, self.start = max_steps, None  # start: (time, step) after the first step

    def seconds(self, step: int) -> float | None:
        if self.start is None or step <= self.start[1]:
            return None
        return (time.perf_counter() - self.start[0]) / (step - self.start[1]) * (self.max_steps - step)

    def step_done(self, step: int) -> None:
        if self.start is None:
            self.start = (time.perf_counter(), step + 1)


def step_line(step: int, m: dict, eta: float | None) -> str:
    """What the loop prints for a training step's metrics."""
    if "skipped" in m:
        return f"step {step:5d} | non-finite loss {m['loss']} (norm {m['grad_norm']}): update skipped"
    return (f"step {step:5d} | loss {m['train_loss']:.6f} | lr {m['lr']:.4e} | norm {m['grad_norm']:.4f} | "
            f"{m['dt_ms']:.1f} ms | {m['tok_per_s']:,.0f} tok/s" + (f" | eta {format_duration(eta)}" if eta is not None else ""))
