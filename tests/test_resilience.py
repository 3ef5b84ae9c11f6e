"""python -m pytest tests/test_resilience.py -v

Nothing lost: runs killed at any moment resume exactly, checkpoints are checked before they are trusted,
signals stop a run cleanly, a non-finite loss never reaches a checkpoint, and every bad input to
train_gpt.py gets one clear line.
"""

import json
import os
import random
import runpy
import shutil
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
import torch

import generate
import train_gpt
from checkpoint import latest_checkpoint, load_latest_checkpoint, prune_checkpoints
from conftest import REPO, assert_same_run, read_log
from model import GPT
from shards import shard_path, write_shard

# the run every test here uses: 16 steps of the tiny preset, CPU, float32 (bit-reproducible)
FLAGS = ["--preset", "tiny", "--device", "cpu", "--dtype", "float32", "--max-steps", "16", "--warmup-steps", "2",
         "--val-every", "4", "--checkpoint-every", "4", "--sample-every", "8", "--num-samples", "2"]

# A harness for the child process: it runs train_gpt.main() and SIGKILLs itself at a chosen moment
# (KILL=what:n, the n-th time `what` happens in this process). Only this throwaway process is patched.
HARNESS = r"""
import os, signal, sys
sys.path.insert(0, sys.argv[1])
import torch
import train_gpt

what, n = (os.environ.get("KILL") or "none:0").split(":")
calls = {"save": 0, "replace": 0, "val": 0}

def die():
    sys.stdout.flush()
    os.kill(os.getpid(), signal.SIGKILL)

torch_save, os_replace, evaluate_val = torch.save, os.replace, train_gpt.evaluate_val

def save(obj, f, *a, **k):  # half a checkpoint reaches the disk, then the process dies
    calls["save"] += 1
    if what == "save" and calls["save"] == int(n):
        import io
        buf = io.BytesIO()
        torch_save(obj, buf, *a, **k)
        f.write(buf.getvalue()[: buf.tell() // 2])
        f.flush()
        die()
    return torch_save(obj, f, *a, **k)

def replace(src, dst):  # the whole checkpoint is on disk under its temporary name, not yet renamed
    if src.endswith(".pt.tmp"):
        calls["replace"] += 1
        if what == "replace" and calls["replace"] == int(n):
            die()
    return os_replace(src, dst)

def val(*a, **k):  # dies in the middle of a val loss evaluation
    calls["val"] += 1
    if what == "val" and calls["val"] == int(n):
        die()
    return evaluate_val(*a, **k)

torch.save, os.replace, train_gpt.evaluate_val = save, replace, val
train_gpt.main(sys.argv[2:])
"""


def run_child(tmp_path, shards, out, *flags, kill=None, timeout=120, **popen):
    """Start train_gpt.py (through the harness) in a subprocess."""
    harness = tmp_path / "harness.py"
    harness.write_text(HARNESS)
    env = {**os.environ, "KILL": kill or "none:0", "PYTHONUNBUFFERED": "1"}  # stdout line by line
    cmd = [sys.executable, str(harness), str(REPO), *FLAGS, "--data-dir", str(shards), "--out-dir", str(out), *flags]
    return subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, **popen)


@pytest.fixture(scope="module")
def reference(corpus_shards, tmp_path_factory):
    """The uninterrupted run, in a subprocess like the killed ones."""
    tmp = tmp_path_factory.mktemp("reference")
    p = run_child(tmp, corpus_shards, tmp / "out")
    out, err = p.communicate(timeout=120)
    assert p.returncode == 0, err
    return tmp / "out"


def train_steps_logged(out) -> list[int]:
    """The steps whose train loss the log holds, read while a run may still be writing it."""
    if not (out / "log.jsonl").exists():
        return []
    with open(out / "log.jsonl") as f:  # the last line may be half written: read only whole lines
        lines = [line for line in f if line.endswith("\n")]
    return [e["step"] for e in map(json.loads, lines) if "train_loss" in e]


@pytest.mark.slow
def test_kill_anywhere_then_resume_is_the_same_run(corpus_shards, reference, tmp_path):
    """SIGKILL mid-checkpoint-write, before the rename, mid-eval and at random moments, resumed with --resume
    each time: the same losses, val losses, samples, final weights and optimizer state as the uninterrupted
    run, bit for bit."""
    out = tmp_path / "out"
    rng = random.Random(1234)
    kills = ["save:2", "replace:1", "val:1", "random", "random", "random"]
    landed = []
    for kill in kills:
        latest = latest_checkpoint(str(out)) if out.exists() else None
        resume_step = int(latest[-9:-3]) if latest else 0
        if resume_step == 16:  # a random kill came after the last checkpoint: the run is over, nothing left to kill
            break
        if kill == "random":  # after a random step this process will take, then a random fraction of a step
            target = rng.randint(resume_step, 15)
            p = run_child(tmp_path, corpus_shards, out, "--resume")
            for line in p.stdout:
                if line.startswith(f"step {target:5d} | loss"):
                    break
            time.sleep(rng.uniform(0, 0.5))
            p.send_signal(signal.SIGKILL)
        else:
            p = run_child(tmp_path, corpus_shards, out, "--resume", kill=kill)
        _, err = p.communicate(timeout=120)
        assert "Traceback" not in err, err
        landed.append((kill, resume_step, p.returncode, max(train_steps_logged(out), default=None)))
    p = run_child(tmp_path, corpus_shards, out, "--resume")
    _, err = p.communicate(timeout=120)
    assert p.returncode == 0, err
    print("kills (what, resumed at, exit status, last step logged):", landed)
    # the kills landed mid-run: all but the last, which may come after the run's end (then it exited 0)
    codes = [code for _, _, code, _ in landed]
    assert len(codes) >= 4 and set(codes[:-1]) == {-signal.SIGKILL} and codes[-1] in (-signal.SIGKILL, 0)
    assert not list(out.glob("*.tmp"))
    assert_same_run(reference, out, 16)  # no step missing, none twice


@pytest.mark.slow
def test_sigterm_stops_cleanly_and_resumes(corpus_shards, reference, tmp_path):
    """SIGTERM: the step finishes, a checkpoint is written, exit status 0; --resume then ends as if never stopped."""
    out = tmp_path / "out"
    p = run_child(tmp_path, corpus_shards, out)
    while len(train_steps_logged(out)) < 6:
        time.sleep(0.05)
        assert p.poll() is None
    p.send_signal(signal.SIGTERM)
    stdout, err = p.communicate(timeout=60)
    assert p.returncode == 0, err
    assert "SIGTERM: stopping after this step" in err
    stop = [e for e in read_log(out) if e.get("event") == "stop"]
    assert len(stop) == 1 and "to continue, run the same command with --resume" in stdout
    assert latest_checkpoint(str(out)).endswith(f"ckpt_{stop[0]['step']:06d}.pt")
    p = run_child(tmp_path, corpus_shards, out, "--resume")
    _, err = p.communicate(timeout=120)
    assert p.returncode == 0, err
    assert_same_run(reference, out, 16)


@pytest.mark.slow
def test_sigint_checkpoints_and_a_second_one_exits_at_once(corpus_shards, tmp_path):
    """One Ctrl-C: checkpoint and exit 130; two Ctrl-C in a row: exit 130 at once, checkpoints intact."""
    for presses in (1, 2):
        out = tmp_path / f"out{presses}"
        # 20 micro-steps a step: a second Ctrl-C 0.2 s after the first comes within the same step
        p = run_child(tmp_path, corpus_shards, out, "--max-steps", "200", "--val-every", "0", "--checkpoint-every", "0",
                      "--sample-every", "0", "--total-batch-size", "5120")
        for line in p.stdout:
            if line.startswith("step     0 | loss"):
                break
        time.sleep(0.3)  # into step 1, which takes well over a second
        p.send_signal(signal.SIGINT)
        first = ""
        if presses == 2:
            # the second only once the handler has taken the first: two signals that arrive while one torch op
            # runs (on a busy machine, easily 0.2 s) reach Python's handler as one
            while "SIGINT: stopping after this step" not in first:  # the handler's message starts with a blank line
                line = p.stderr.readline()
                assert line, first  # stderr closed: the child is gone
                first += line
            p.send_signal(signal.SIGINT)
        rest, err = p.communicate(timeout=60)
        err = first + err
        assert p.returncode == 130, err
        assert "Traceback" not in err
        ckpts = list(out.glob("ckpt_*.pt"))
        if presses == 1:
            assert len(ckpts) == 1 and "stopped by SIGINT" in rest
        else:
            assert "second interrupt: exiting now" in err and not ckpts and not list(out.glob("*.tmp"))

# -----------------------------------------------------------------------------
# checkpoints that can be trusted


def test_ctrl_c_in_the_last_step_lets_the_run_finish(corpus_shards, tmp_path, monkeypatch):
    """A Ctrl-C that arrives during the last step comes too late to stop the run: it ends as a finished run,
    with its final checkpoint and exit status 0 (no SystemExit), not as an interrupted one."""
    real_step = train_gpt.train_step

    def step(**kw):
        if kw["step"] == 7:  # the last of 8 steps: a Ctrl-C while it runs
            signal.raise_signal(signal.SIGINT)
        return real_step(**kw)
    monkeypatch.setattr(train_gpt, "train_step", step)
    train_gpt.main([*FLAGS, "--max-steps", "8", "--data-dir", str(corpus_shards), "--out-dir", str(tmp_path)])
    assert (tmp_path / "ckpt_000008.pt").exists() and not any(e.get("event") == "stop" for e in read_log(tmp_path))


def test_signal_before_a_resumed_first_step_keeps_its_evaluations_done(corpus_shards, run_dir, tmp_path, monkeypatch):
    """A resumed run stopped by a signal before its first step writes that step's checkpoint again, still
    saying its evaluations are done: the next resume doesn't log the step's val loss and samples twice."""
    out = copy_run(run_dir, tmp_path)
    for step in (12, 16):
        (out / f"ckpt_{step:06d}.pt").unlink()
    with monkeypatch.context() as m:
        m.setattr(train_gpt.StopSignals, "stop", lambda self, device: True)  # a SIGTERM before the first step
        train_gpt.main([*FLAGS, "--data-dir", str(corpus_shards), "--out-dir", str(out), "--resume"])
    assert load_latest_checkpoint(str(out))[1]["events_done"]
    train_gpt.main([*FLAGS, "--data-dir", str(corpus_shards), "--out-dir", str(out), "--resume"])
    assert [e["step"] for e in read_log(out) if "val_loss" in e] == [0, 4, 8, 12, 16]


@pytest.fixture(scope="module")
def run_dir(corpus_shards, tmp_path_factory):
    """The run of FLAGS, in this process: checkpoints at steps 4, 8, 12 and 16."""
    out = tmp_path_factory.mktemp("run")
    train_gpt.main([*FLAGS, "--data-dir", str(corpus_shards), "--out-dir", str(out)])
    return out


def copy_run(run_dir, tmp_path):
    """A copy of run_dir that a test may damage."""
    out = tmp_path / "run"
    shutil.copytree(run_dir, out)
    return out


@pytest.mark.parametrize("damage", ["truncate", "flip", "empty", "garbage"])
def test_damaged_latest_checkpoint_falls_back(run_dir, tmp_path, capsys, damage):
    """A truncated, bit-flipped, empty or garbage latest checkpoint: a warning, and the previous one is used."""
    out = copy_run(run_dir, tmp_path)
    path = out / "ckpt_000016.pt"
    data = path.read_bytes()
    if damage == "truncate":
        data = data[: len(data) // 2]
    elif damage == "flip":  # one bit inside the weights: torch.load alone would not notice
        i = len(data) // 2
        data = data[:i] + bytes([data[i] ^ 0x10]) + data[i + 1:]
    elif damage == "empty":
        data = b""
    else:
        data = os.urandom(4096)
    path.write_bytes(data)
    found_path, ckpt = load_latest_checkpoint(str(out))
    assert found_path.endswith("ckpt_000012.pt") and ckpt["step"] == 12
    err = capsys.readouterr().err
    assert "warning:" in err and "ckpt_000016.pt" in err and "damaged" in err


def test_resume_after_damaged_latest_checkpoint_is_the_same_run(corpus_shards, run_dir, tmp_path):
    """Resumed from the checkpoint before a damaged latest one, a run redoes the steps after it, logs none
    twice, and ends as the uninterrupted run did, bit for bit: losses, samples, weights and optimizer state."""
    out = copy_run(run_dir, tmp_path)
    (out / "ckpt_000016.pt").write_bytes(b"\x00" * 100)
    train_gpt.main([*FLAGS, "--data-dir", str(corpus_shards), "--out-dir", str(out), "--resume"])
    assert_same_run(run_dir, out, 16)


def test_resume_when_every_checkpoint_is_damaged(corpus_shards, run_dir, tmp_path, capsys):
    """--resume where no checkpoint loads (each one truncated, bit-flipped, empty or garbage) stops with one line
    and a warning per checkpoint, and changes nothing: not a new run from step 0 that empties the log and writes
    over the checkpoints. generate.py on the folder says so in one line too."""
    out = copy_run(run_dir, tmp_path)
    for step, damage in [(4, "truncate"), (8, "flip"), (12, "empty"), (16, "garbage")]:
        path = out / f"ckpt_{step:06d}.pt"
        data = path.read_bytes()
        i = len(data) // 2
        path.write_bytes({"truncate": data[:i], "flip": data[:i] + bytes([data[i] ^ 0x10]) + data[i + 1:],
                          "empty": b"", "garbage": os.urandom(4096)}[damage])
    before = {p.name: p.read_bytes() for p in out.iterdir()}
    with pytest.raises(SystemExit) as e:
        train_gpt.main([*FLAGS, "--data-dir", str(corpus_shards), "--out-dir", str(out), "--resume"])
    assert str(e.value) == f"error: no checkpoint in {out} can be loaded (see the warnings above); nothing was changed"
    assert {p.name: p.read_bytes() for p in out.iterdir()} == before
    err = capsys.readouterr().err
    assert all(f"ckpt_{step:06d}.pt" in err for step in (4, 8, 12, 16)) and err.count("warning:") == 4
    with pytest.raises(SystemExit) as e:
        generate.main(["--checkpoint", str(out), "--max-new-tokens", "4"])
    assert str(e.value) == f"error: no checkpoint in {out} can be loaded (see the warnings above)"


class Payload:
    def __reduce__(self):  # unpickling this would run `echo`
        return (os.system, ("echo this should never run",))


def test_pickled_code_is_refused(corpus_shards, run_dir, tmp_path):
    """A checkpoint that carries pickled Python objects is refused (weights_only=True) and says why."""
    out = copy_run(run_dir, tmp_path)
    ckpt = torch.load(out / "ckpt_000016.pt", weights_only=True)
    torch.save({**ckpt, "extra": Payload()}, out / "ckpt_000020.pt")
    with pytest.raises(SystemExit) as e:
        generate.main(["--checkpoint", str(out)])
    msg = str(e.value)
    assert msg.startswith("error: refusing to load") and "pickled Python objects" in msg and "\n" not in msg
    with pytest.raises(SystemExit, match="refusing to load"):
        train_gpt.main([*FLAGS, "--data-dir", str(corpus_shards), "--out-dir", str(out), "--resume"])


def test_not_a_checkpoint(tmp_path):
    """A file that is not a checkpoint (text, a plain tensor) gets one line naming it."""
    (tmp_path / "notes.pt").write_text("hello\n")
    torch.save(torch.ones(3), tmp_path / "tensor.pt")
    for name, message in [("notes.pt", "is damaged or not a checkpoint"), ("tensor.pt", "not a checkpoint of")]:
        with pytest.raises(SystemExit) as e:
            generate.main(["--checkpoint", str(tmp_path / name)])
        assert message in str(e.value) and name in str(e.value) and "\n" not in str(e.value)


def test_keep_checkpoints(corpus_shards, tmp_path):
    """--keep-checkpoints 2 leaves the two newest checkpoints; the default keeps all of them."""
    train_gpt.main([*FLAGS, "--data-dir", str(corpus_shards), "--out-dir", str(tmp_path), "--keep-checkpoints", "2",
                    "--val-every", "0", "--sample-every", "0"])
    assert sorted(p.name for p in tmp_path.glob("ckpt_*")) == ["ckpt_000012.pt", "ckpt_000016.pt"]
    assert train_gpt.TrainConfig().keep_checkpoints == 0


def test_pruning_keeps_the_checkpoint_just_written(corpus_shards, run_dir, tmp_path):
    """A resumed run that skipped a damaged newer checkpoint (ckpt_16) keeps the one it just wrote (ckpt_14):
    counted from the damaged one, --keep-checkpoints 1 deleted it and every good checkpoint with it."""
    out = copy_run(run_dir, tmp_path)
    path = out / "ckpt_000016.pt"
    path.write_bytes(path.read_bytes()[:1000])  # cut short: the resume falls back to ckpt_12
    train_gpt.main([*FLAGS, "--data-dir", str(corpus_shards), "--out-dir", str(out), "--resume",
                    "--keep-checkpoints", "1", "--max-steps", "14"])
    assert sorted(p.name for p in out.glob("ckpt_*.pt")) == ["ckpt_000014.pt", "ckpt_000016.pt"]
    assert load_latest_checkpoint(str(out))[1]["step"] == 14


def test_a_checkpoint_that_cannot_be_pruned_is_a_warning(tmp_path, monkeypatch, capsys):
    """An old checkpoint that can't be deleted (open in another program on Windows, the folder gone read-only)
    is a warning and the run goes on, not a PermissionError traceback after the new checkpoint is written."""
    for step in (4, 8, 12):
        (tmp_path / f"ckpt_{step:06d}.pt").write_bytes(b"")
    remove = os.remove

    def refuse_ckpt_4(path):
        if path.endswith("ckpt_000004.pt"):
            raise PermissionError(13, "Permission denied", path)
        remove(path)
    monkeypatch.setattr(os, "remove", refuse_ckpt_4)
    prune_checkpoints(str(tmp_path), 1)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ckpt_000004.pt", "ckpt_000012.pt"]
    assert capsys.readouterr().err == (f"warning: cannot remove {tmp_path / 'ckpt_000004.pt'} (--keep-checkpoints): "
                                       "Permission denied\n")


def fsyncs(monkeypatch) -> list:
    """Record, in order, each fsync (of what: the inode synced) and each rename."""
    events, fsync, replace = [], os.fsync, os.replace
    monkeypatch.setattr(os, "fsync", lambda fd: (events.append(("fsync", os.fstat(fd).st_ino)), fsync(fd)))
    monkeypatch.setattr(os, "replace", lambda src, dst: (events.append(("replace", dst)), replace(src, dst)))
    return events


def test_a_checkpoint_survives_a_power_cut(tmp_path, monkeypatch):
    """The checkpoint's bytes are flushed before its rename, and its folder after: otherwise a power cut can
    undo the rename, and the checkpoint the run reported (and pruned the older ones for) is gone."""
    from checkpoint import save_checkpoint
    events = fsyncs(monkeypatch)
    path = str(tmp_path / "ckpt_000004.pt")
    save_checkpoint(path, {"step": 4})
    assert events == [("fsync", os.stat(path).st_ino), ("replace", path), ("fsync", os.stat(tmp_path).st_ino)]


def test_the_log_is_on_disk_before_a_checkpoint_counts_it(tmp_path, monkeypatch):
    """The log's length a checkpoint records (Logger.size) is flushed to disk first: after a power cut the
    checkpoint (flushed) must not outlive the lines it counts, or the resumed run appends to half a line."""
    from run_log import Logger
    logger = Logger(str(tmp_path), enabled=True)
    logger.log(0, train_loss=10.9)
    events = fsyncs(monkeypatch)
    try:
        assert logger.size() == (tmp_path / "log.jsonl").stat().st_size
    finally:
        logger.finish()
    assert events == [("fsync", (tmp_path / "log.jsonl").stat().st_ino)]


def test_log_truncate_redo_takes_out_the_steps_evaluations_only(tmp_path):
    """Logger.truncate(size, redo=step) cuts the log at size, then takes out the entries of that step's
    evaluations before the cut, also from behind the run's events (a stop, a resume), which stay; earlier
    steps and a line it can't read stay too. A log shorter than size is not cut in the middle of a line."""
    from run_log import Logger
    path = tmp_path / "log.jsonl"
    lines = ['{"step": 11, "train_loss": 3.0}', "not json", '{"step": 12, "val_loss": 2.5}',
             '{"step": 12, "event": "resume"}', '{"step": 12, "val_loss": 2.5}', '{"step": 12, "event": "stop"}',
             '{"step": 12, "samples": ["a"]}']
    events = [lines[3], lines[5]]
    cases = [(12, lines[:2] + events, 0), (11, lines, 0), (None, lines, 0), (12, lines[:2] + events, 10)]
    for redo, kept, past_the_end in cases:
        path.write_text("".join(line + "\n" for line in lines) + ("" if past_the_end else '{"step": 12, "loss": 2.9}\n'))
        logger = Logger(str(tmp_path), enabled=True)
        try:  # the cut: before the last line, or 10 bytes past the end of a log cut short
            logger.truncate(sum(len(line) + 1 for line in lines) + past_the_end, redo=redo)
        finally:
            logger.finish()
        assert path.read_text().splitlines() == kept, (redo, past_the_end)
    path.write_text(lines[1] + "\n" + lines[2] + "\n")
    logger = Logger(str(tmp_path), enabled=True)
    try:
        logger.truncate(path.stat().st_size, redo=12)
    finally:
        logger.finish()
    assert path.read_text().splitlines() == ["not json"]


@pytest.mark.skipif(not os.path.exists("/dev/full"), reason="needs /dev/full (Linux), whose writes fail with ENOSPC")
def test_disk_full_while_writing_the_log(corpus_shards, tmp_path):
    """A log write that fails (a full disk: the log is /dev/full) stops the run with one line naming the log and
    the OS's reason, not an OSError traceback."""
    out = tmp_path / "out"
    out.mkdir()
    (out / "log.jsonl").symlink_to("/dev/full")
    with pytest.raises(SystemExit) as e:
        train_gpt.main([*FLAGS, "--data-dir", str(corpus_shards), "--out-dir", str(out)])
    assert str(e.value) == f"error: cannot write {out / 'log.jsonl'}: No space left on device"


def test_resume_after_a_log_line_cut_short(corpus_shards, run_dir, tmp_path):
    """A run killed in the middle of a log write leaves half a line: the resumed run cuts it off with the rest
    after its checkpoint, and logs every step once, as the uninterrupted run did."""
    out = copy_run(run_dir, tmp_path)
    (out / "ckpt_000016.pt").unlink()
    with open(out / "log.jsonl", "a") as f:
        f.write('{"step": 16, "train_lo')
    train_gpt.main([*FLAGS, "--data-dir", str(corpus_shards), "--out-dir", str(out), "--resume"])
    assert_same_run(run_dir, out, 16)


@pytest.mark.slow
def test_disk_full_while_writing_a_checkpoint(corpus_shards, run_dir, tmp_path):
    """A write that fails half-way (file size limit standing in for a full disk): one clear line, non-zero
    exit, no temporary file, and the previous checkpoints byte for byte as they were."""
    out = copy_run(run_dir, tmp_path)
    for name in ("ckpt_000016.pt", "ckpt_000012.pt"):
        (out / name).unlink()
    before = {p.name: p.read_bytes() for p in out.glob("ckpt_*")}
    limit = (out / "ckpt_000008.pt").stat().st_size // 2  # the log can grow; a checkpoint can't be written
    code = ("import resource, signal, sys; sys.path.insert(0, sys.argv[1]); "
            "signal.signal(signal.SIGXFSZ, signal.SIG_IGN); "
            f"resource.setrlimit(resource.RLIMIT_FSIZE, ({limit}, {limit})); "
            "import train_gpt; train_gpt.main(sys.argv[2:])")
    p = subprocess.run([sys.executable, "-c", code, str(REPO), *FLAGS, "--data-dir", str(corpus_shards),
                        "--out-dir", str(out), "--resume"], capture_output=True, text=True, timeout=120)
    assert p.returncode == 1
    last = p.stderr.strip().splitlines()[-1]
    assert "Traceback" not in p.stderr
    assert last.startswith("error: cannot write checkpoint") and "File too large" in last and "intact" in last
    assert {p.name: p.read_bytes() for p in out.glob("ckpt_*")} == before
    assert not list(out.glob("*.tmp"))


@pytest.mark.slow  # two training runs, a few seconds
def test_nonfinite_loss_stops_or_skips(corpus_shards, tmp_path, monkeypatch):
    """A NaN loss stops the run naming its step, with no checkpoint after it; --skip-nonfinite skips that
    update, logs it, and the run goes on with finite weights."""
    forward = GPT.forward
    calls = {"n": 0}

    def nan_at_step_5(self, idx, targets=None):
        logits, loss = forward(self, idx, targets)
        if self.training:
            calls["n"] += 1
            if calls["n"] in (11, 12):  # step 5's two micro-steps
                loss = loss * float("nan")
        return logits, loss

    monkeypatch.setattr(GPT, "forward", nan_at_step_5)
    args = [*FLAGS, "--data-dir", str(corpus_shards), "--sample-every", "0"]
    with pytest.raises(SystemExit) as e:
        train_gpt.main([*args, "--out-dir", str(tmp_path / "stop")])
    assert "non-finite loss nan" in str(e.value) and "at step 5" in str(e.value)
    assert sorted(p.name for p in (tmp_path / "stop").glob("ckpt_*")) == ["ckpt_000004.pt"]

    calls["n"] = 0
    train_gpt.main([*args, "--out-dir", str(tmp_path / "skip"), "--skip-nonfinite"])
    log = read_log(tmp_path / "skip")
    assert [e["step"] for e in log if "skipped" in e] == [5]
    assert [e["step"] for e in log if "train_loss" in e] == [s for s in range(16) if s != 5]
    ckpt = torch.load(tmp_path / "skip" / "ckpt_000016.pt", weights_only=True)
    assert all(torch.isfinite(v).all() for v in ckpt["model"].values())


def test_nonfinite_weights_are_never_checkpointed(corpus_shards, tmp_path, monkeypatch):
    """If the weights themselves become non-finite, no checkpoint is written and the earlier ones stay."""
    step = torch.optim.AdamW.step

    def poison_after_step_6(self, *a, **k):
        out = step(self, *a, **k)
        self._n = getattr(self, "_n", 0) + 1
        if self._n == 6:
            with torch.no_grad():
                self.param_groups[0]["params"][0].fill_(float("inf"))
        return out

    monkeypatch.setattr(torch.optim.AdamW, "step", poison_after_step_6)
    with pytest.raises(SystemExit, match="NaN or inf at step 8: no checkpoint written"):
        train_gpt.main([*FLAGS, "--data-dir", str(corpus_shards), "--out-dir", str(tmp_path), "--val-every", "0",
                        "--sample-every", "0", "--skip-nonfinite"])  # the inf weights' losses are skipped
    assert [p.name for p in tmp_path.glob("ckpt_*")] == ["ckpt_000004.pt"]

# -----------------------------------------------------------------------------
# bad input: one clear line, non-zero exit, nothing overwritten


def make_shards(path, n_tokens=4096, vocab=50257, val=True, train=True):
    path.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    if val:
        write_shard(shard_path(str(path), "val", 0), rng.integers(0, vocab, n_tokens).astype(np.uint16))
    if train:
        write_shard(shard_path(str(path), "train", 1), rng.integers(0, vocab, n_tokens).astype(np.uint16))
    return path


def damage_shard(path, how):
    data = bytearray(path.read_bytes())
    if how == "magic":
        data[:4] = b"\x00\x00\x00\x00"
    elif how == "version":
        data[4:8] = np.int32(2).tobytes()
    elif how == "truncated":
        data = data[:-100]
    elif how == "token":
        data[-2:] = np.uint16(60000).tobytes()
    path.write_bytes(bytes(data))


def train_error(tmp_path, data_dir, *flags) -> str:
    """train_gpt.main's one-line error, after checking that the out dir was left as it was."""
    out = tmp_path / "out"
    out.mkdir(exist_ok=True)
    (out / "log.jsonl").write_text('{"step": 0, "keep": "me"}\n')
    with pytest.raises(SystemExit) as e:
        train_gpt.main([*FLAGS, "--data-dir", str(data_dir), "--out-dir", str(out), *flags])
    assert (out / "log.jsonl").read_text() == '{"step": 0, "keep": "me"}\n'  # nothing overwritten
    assert not list(out.glob("ckpt_*"))
    msg = str(e.value)
    assert msg.startswith("error: ") and "\n" not in msg
    return msg


@pytest.mark.parametrize("case,message", [
    ("missing", "data dir {data} not found: make shards with `python fineweb.py`"),
    ("a file", "data dir {data} is a file: give the folder of shards that fineweb.py wrote"),
    ("no train", "no train shards (train_*.bin) in {data}"),
    ("no val", "no val shards (val_*.bin) in {data}"),
    ("magic", "train_000001.bin is not a token shard (bad magic number)"),
    ("version", "train_000001.bin has shard format version 2, this code reads version 1"),
    ("truncated", "train_000001.bin is truncated or damaged: its header says 4,096 tokens but it holds 4,046"),
    ("token", "train_000001.bin holds token id 60000, but the model's --vocab-size is 50304"),
    ("small", "val_000000.bin holds 100 tokens, fewer than one batch"),
    ("later truncated", "train_000002.bin is truncated or damaged"),
    ("later magic", "train_000002.bin is not a token shard (bad magic number)"),
])
def test_bad_data(tmp_path, case, message):
    """Missing, absent, damaged, foreign or too small shards: one line that names the file and the fix."""
    data = tmp_path / "data"
    if case == "no train":
        make_shards(data, train=False)
    elif case == "no val":
        make_shards(data, val=False)
    elif case == "small":
        make_shards(data, train=False)
        write_shard(shard_path(str(data), "val", 0), np.zeros(100, dtype=np.uint16))
        write_shard(shard_path(str(data), "train", 1), np.zeros(4096, dtype=np.uint16))
    elif case.startswith("later"):  # found before the first step, not when the run reaches that shard
        make_shards(data)
        write_shard(shard_path(str(data), "train", 2), np.zeros(4096, dtype=np.uint16))
        damage_shard(data / "train_000002.bin", case.split()[1])
    elif case == "a file":  # a shard or a jsonl given for the folder
        data.write_text("{}\n")
    elif case != "missing":
        make_shards(data)
        damage_shard(data / "train_000001.bin", case)
    assert message.format(data=data) in train_error(tmp_path, data)


@pytest.mark.parametrize("flags,world_size,message", [
    (["--n-head", "3"], 1, "n_embd (32) must be divisible by n_head (3)"),
    (["--total-batch-size", "1000"], 1, "--total-batch-size 1000 must be a multiple of --batch-size x --seq-len"),
    (["--total-batch-size", "512"], 3, "x processes = 4 x 64 x 3 = 768"),
    (["--seq-len", "128"], 1, "--seq-len 128 is longer than the model's context --block-size 64"),
    (["--max-steps", "0"], 1, "--max-steps must be positive, got 0"),
    (["--max-steps=-3"], 1, "--max-steps must be positive, got -3"),
    (["--max-lr", "0"], 1, "--max-lr must be positive, got 0.0"),
    (["--max-lr=-1e-3"], 1, "--max-lr must be positive, got -0.001"),
    (["--warmup-steps", "20"], 1, "--warmup-steps 20 is more than --max-steps 16"),
    (["--keep-checkpoints", "-1"], 1, "--keep-checkpoints can't be negative"),
    (["--max-lr", "nan"], 1, "--max-lr must be a finite number, got nan"),
    (["--weight-decay", "inf"], 1, "--weight-decay must be a finite number, got inf"),
    (["--val-steps", "0"], 1, "--val-steps 0 measures no val batch"),
    (["--num-samples", "0"], 1, "--num-samples 0 --sample-len 8 draws no text: give both one or more, or turn"),
    (["--sample-len", "0"], 1, "--num-samples 2 --sample-len 0 draws no text"),
    (["--seed", str(2**64)], 1, "--seed must fit in 64 bits, got 18446744073709551616"),
    (["--vocab-size", "1024", "--sample-every", "4"], 1, "--vocab-size 1024 is smaller than GPT-2's 50,257"),
    # weights that no memory of this machine holds: refused, not torch's allocator error (or hours building layers)
    (["--n-embd", "1000000000", "--n-head", "1"], 1, "the model would have 24,000,050,396,000,000,000 parameters"),
    (["--block-size", "100000000000"], 1, "12,800.0 GB in float32 x 1 process(es): more than this machine's"),
    (["--n-layer", "1000000000"], 1, "(--n-layer, --n-embd, --vocab-size, --block-size)"),
])
def test_bad_flags(tmp_path, monkeypatch, flags, world_size, message):
    """Flag values that can't work are refused before anything is read or written."""
    monkeypatch.setenv("WORLD_SIZE", str(world_size))
    assert message in train_error(tmp_path, tmp_path / "no-data-needed", *flags)


@pytest.mark.parametrize("where", ["this machine", "cpu"])
def test_model_that_memory_cant_hold_stops_with_one_line(corpus_shards, tmp_path, monkeypatch, where):
    """A model whose weights pass the size check but can't be allocated after all (memory taken by others),
    where it is built or on its device: the allocator's reason in one line naming where, not its RuntimeError
    traceback from deep inside torch."""
    error = RuntimeError("[enforce fail at alloc_cpu.cpp:127] data. DefaultCPUAllocator: can't allocate memory: "
                         "you tried to allocate 201216000000 bytes. Error code 12 (Cannot allocate memory)")
    if where == "this machine":
        monkeypatch.setattr(train_gpt, "GPT", lambda config: (_ for _ in ()).throw(error))
    else:
        monkeypatch.setattr(train_gpt.GPT, "to", lambda self, device: (_ for _ in ()).throw(error))
    with pytest.raises(SystemExit) as e:
        train_gpt.main([*FLAGS, "--data-dir", str(corpus_shards), "--out-dir", str(tmp_path / "out")])
    assert str(e.value).startswith(f"error: not enough memory on {where} for the model's weights: [enforce fail at "
                                   "alloc_cpu.cpp:127] data. DefaultCPUAllocator: can't allocate memory")
    assert "\n" not in str(e.value) and not list((tmp_path / "out").glob("ckpt_*"))


def test_model_size_check_counts_the_processes_of_this_machine(tmp_path, monkeypatch):
    """Under torchrun each process on a machine builds a whole float32 copy first: the check multiplies by
    LOCAL_WORLD_SIZE, so a model at 40% of the memory passes alone and is refused for 4 processes."""
    from device import host_memory
    n_layer = int(0.4 * host_memory() / 4 / (12 * 1024 ** 2))  # --n-embd 1024: ~12.6M parameters a layer
    flags = ["--n-layer", str(n_layer), "--n-embd", "1024", "--n-head", "16"]
    monkeypatch.setenv("LOCAL_WORLD_SIZE", "4")
    with pytest.raises(SystemExit, match=r"GB in float32 x 4 process\(es\): more than this machine's"):
        train_gpt.parse_config(["--preset", "tiny", *flags])
    monkeypatch.setenv("LOCAL_WORLD_SIZE", "1")
    assert train_gpt.parse_config(["--preset", "tiny", *flags]).n_layer == n_layer


def test_resume_with_another_model(corpus_shards, run_dir, tmp_path):
    """--resume with a checkpoint of another model configuration is refused, naming the flag; nothing changes."""
    out = copy_run(run_dir, tmp_path)
    before = {p.name: p.read_bytes() for p in out.iterdir()}
    with pytest.raises(SystemExit) as e:
        train_gpt.main([*FLAGS, "--data-dir", str(corpus_shards), "--out-dir", str(out), "--n-layer", "3", "--resume"])
    assert "belongs to a different run: it has --n-layer 2 (now 3)" in str(e.value)
    assert {p.name: p.read_bytes() for p in out.iterdir()} == before


@pytest.mark.parametrize("flags,message", [
    ([], "holds checkpoints of an earlier run: continue it with --resume"),
    (["--resume", "--n-layer", "3"], "belongs to a different run: it has --n-layer 2 (now 3)"),
    (["--resume", "--preset", "seed"], "belongs to a different run (started with --preset tiny): it has --n-layer 2 "
                                       "(now 4)"),
    # beyond the model's shape: the optimizer's state and the data order (tokens per step, per micro-batch)
    (["--resume", "--total-batch-size", "1024"], "belongs to a different run: it has --total-batch-size 512 "
                                                 "(now 1024)"),
    (["--resume", "--batch-size", "8"], "belongs to a different run: it has --batch-size 4 (now 8)"),
    (["--resume", "--seq-len", "32"], "belongs to a different run: it has --seq-len 64 (now 32)"),
    (["--resume", "--optimizer", "muon"], "belongs to a different run: it has --optimizer adamw (now muon)"),
    (["--resume", "--max-steps", "12"], "is at step 16, past --max-steps 12"),
])
def test_checkpoint_refused_before_anything_slow(run_dir, tmp_path, flags, message):
    """A forgotten --resume, or a checkpoint that doesn't fit the flags, is the error: found before the data,
    HellaSwag (a download without --hellaswag-data) or the model are loaded, whose errors would hide it."""
    out = copy_run(run_dir, tmp_path)
    with pytest.raises(SystemExit) as e:
        train_gpt.main([*FLAGS, "--data-dir", str(tmp_path / "nowhere"), "--out-dir", str(out),
                        "--hellaswag-every", "4", "--hellaswag-data", str(tmp_path / "missing.jsonl"), *flags])
    assert message in str(e.value)


def test_resume_past_max_steps(corpus_shards, run_dir, tmp_path):
    """--resume with a --max-steps below the checkpoint's step stops with one line, instead of doing nothing
    and exiting as if it had trained; nothing changes."""
    out = copy_run(run_dir, tmp_path)
    before = {p.name: p.read_bytes() for p in out.iterdir()}
    with pytest.raises(SystemExit) as e:
        train_gpt.main([*FLAGS, "--data-dir", str(corpus_shards), "--out-dir", str(out), "--max-steps", "12",
                        "--resume"])
    assert str(e.value) == f"error: {out / 'ckpt_000016.pt'} is at step 16, past --max-steps 12: nothing to do"
    assert {p.name: p.read_bytes() for p in out.iterdir()} == before


def test_resume_at_a_middle_checkpoint_as_the_last_step_does_the_end_evaluations(corpus_shards, run_dir, tmp_path):
    """A run killed after its checkpoint at step 12, resumed with --max-steps 12 to end there: step 12 is now
    the last, so its evaluations "at the end" run (samples, due every 8 steps, were not due at 12 before);
    before, the checkpoint's "evaluations done" skipped them and the run ended with none. Those done at 12
    before the stop (val loss) are done again, their earlier entries taken out of the log."""
    out = copy_run(run_dir, tmp_path)
    (out / "ckpt_000016.pt").unlink()
    before = read_log(out)
    train_gpt.main([*FLAGS, "--data-dir", str(corpus_shards), "--out-dir", str(out), "--max-steps", "12", "--resume"])
    log = read_log(out)
    assert [e["step"] for e in log if "samples" in e] == [0, 8, 12]
    assert load_latest_checkpoint(str(out))[1]["events_done"]
    # the val loss at step 12, done before the stop, is done again at the end: logged once, not twice
    assert [e["step"] for e in log if "val_loss" in e] == [0, 4, 8, 12]
    val_12 = [e for e in before if e["step"] == 12 and "val_loss" in e]
    assert [e for e in log if e["step"] == 12 and "val_loss" in e] == val_12  # the same weights, the same loss
    resumed = [e for e in log if e.get("event") == "resume"]
    assert log[:log.index(val_12[0])] == before[:before.index(val_12[0])] + resumed  # all before it kept


def test_resume_with_weights_that_dont_fit_their_config(corpus_shards, run_dir, tmp_path):
    """A checkpoint whose checksum holds but whose saved config doesn't fit its weights (edited by hand, here to
    3 layers over 2 layers' weights): one line naming it, not load_state_dict's traceback; nothing changes."""
    from checkpoint import load_checkpoint, save_checkpoint
    out = copy_run(run_dir, tmp_path)
    path = out / "ckpt_000016.pt"
    ckpt = load_checkpoint(str(path))
    ckpt.pop("checksum", None)
    save_checkpoint(str(path), {**ckpt, "config": {**ckpt["config"], "n_layer": 3}})
    before = {p.name: p.read_bytes() for p in out.iterdir()}
    with pytest.raises(SystemExit) as e:
        train_gpt.main([*FLAGS, "--data-dir", str(corpus_shards), "--out-dir", str(out), "--n-layer", "3", "--resume"])
    assert str(e.value).startswith(f"error: {path} can't be resumed by this model: ") and "\n" not in str(e.value)
    assert {p.name: p.read_bytes() for p in out.iterdir()} == before


def test_resume_on_shorter_shards(corpus_shards, run_dir, tmp_path):
    """A checkpoint's place in the data past the end of today's shard (the shards made again, smaller) is
    refused with one line, not a reshape error from torch."""
    out, data = copy_run(run_dir, tmp_path), tmp_path / "data"
    shutil.copytree(corpus_shards, data)
    for path in data.glob("train_*.bin"):
        write_shard(str(path), np.zeros(600, dtype=np.uint16))  # room for 2 batches of 4 x 64, not the saved place
    before = {p.name: p.read_bytes() for p in out.iterdir()}
    with pytest.raises(SystemExit) as e:
        train_gpt.main([*FLAGS, "--data-dir", str(data), "--out-dir", str(out), "--max-steps", "20", "--resume"])
    assert "at token" in str(e.value) and str(e.value).endswith("resume with the same data")
    assert {p.name: p.read_bytes() for p in out.iterdir()} == before


def test_resume_takes_the_optimizer_settings_of_its_flags(corpus_shards, run_dir, tmp_path, monkeypatch):
    """A resumed run's weight decay is that of its flags (and its log), not the checkpoint's."""
    out, seen = copy_run(run_dir, tmp_path), []
    step = train_gpt.train_step

    def spy(**kw):
        seen.append([group["weight_decay"] for group in kw["optimizer"].param_groups])
        return step(**kw)
    monkeypatch.setattr(train_gpt, "train_step", spy)
    train_gpt.main([*FLAGS, "--data-dir", str(corpus_shards), "--out-dir", str(out), "--max-steps", "18",
                    "--weight-decay", "0.5", "--resume"])
    assert seen == [[0.5, 0.0]] * 2


@pytest.mark.skipif(sys.platform == "win32", reason="no fcntl on Windows: runs there are not guarded")
def test_a_second_run_in_the_same_out_dir_is_refused(corpus_shards, run_dir, tmp_path):
    """While a run writes --out-dir (its log.jsonl locked), another run there stops at once with one line and
    touches nothing: not the first run's log, its checkpoints, or the half-written one it is writing."""
    import fcntl
    out = copy_run(run_dir, tmp_path)
    (out / "ckpt_000020.pt.tmp").write_bytes(b"the first run's checkpoint, half written")
    before = {p.name: p.read_bytes() for p in out.iterdir()}
    with open(out / "log.jsonl", "a") as held:
        fcntl.flock(held, fcntl.LOCK_EX)  # the first run (another open file: the same as another process)
        with pytest.raises(SystemExit) as e:
            train_gpt.main([*FLAGS, "--max-steps", "20", "--data-dir", str(corpus_shards), "--out-dir", str(out),
                            "--resume"])
    assert str(e.value.code) == (f"error: another run is writing to --out-dir {out} (its log.jsonl is locked): "
                                 "wait for it to end, or choose another --out-dir")
    assert {p.name: p.read_bytes() for p in out.iterdir()} == before
    train_gpt.main([*FLAGS, "--max-steps", "20", "--data-dir", str(corpus_shards), "--out-dir", str(out), "--resume"])
    assert (out / "ckpt_000020.pt").exists()  # once the first run is gone, the lock is free


def test_ctrl_c_before_the_loop_exits_without_a_traceback(tmp_path, monkeypatch):
    """Ctrl-C while the run starts (before the loop's own handler): exit status 130, not KeyboardInterrupt's
    traceback (from every process, under torchrun)."""
    import device

    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt
    monkeypatch.setattr(device, "pick_device", interrupted)  # the script's fresh import takes this one
    monkeypatch.setattr(sys, "argv", ["train_gpt.py", *FLAGS, "--out-dir", str(tmp_path / "run")])
    with pytest.raises(BaseException) as e:  # without the fix, a KeyboardInterrupt: caught here, not by pytest
        runpy.run_path(str(REPO / "train_gpt.py"), run_name="__main__")
    assert type(e.value) is SystemExit and e.value.code == 130


def test_out_dir_not_writable(corpus_shards, tmp_path):
    """An --out-dir that can't be created (a file stands in the way) gets one line."""
    (tmp_path / "file").write_text("x")
    with pytest.raises(SystemExit) as e:
        train_gpt.main([*FLAGS, "--data-dir", str(corpus_shards), "--out-dir", str(tmp_path / "file" / "run")])
    assert str(e.value) == f"error: cannot write to --out-dir {tmp_path / 'file' / 'run'}: Not a directory"


@pytest.mark.slow
def test_errors_have_no_traceback(tmp_path):
    """Through the real command line: one line on stderr, exit status 1, no traceback."""
    for args in (["--data-dir", str(tmp_path / "nowhere")], ["--n-head", "3"]):
        p = subprocess.run([sys.executable, str(REPO / "train_gpt.py"), *FLAGS, "--out-dir", str(tmp_path / "o"), *args],
                           capture_output=True, text=True, timeout=60)
        assert p.returncode == 1
        assert p.stderr.count("\n") == 1 and p.stderr.startswith("error: "), p.stderr
