"""python -m pytest tests/test_distributed.py -v

Several processes train as one. Two CPU processes started by torchrun (gloo), with DDP or with FSDP, take the
same steps as one process given the same seed and the same total batch: the same losses and weights, up to
the order in which float32 sums are added. Their checkpoints load in one process and resume. Every test that
starts torchrun is marked slow.
"""

import os
import re
import shutil
import subprocess
import sys

import pytest
import torch

import hellaswag
import train_gpt
from checkpoint import load_checkpoint, model_from_checkpoint
from conftest import HELLASWAG, REPO, assert_same_run, metric, read_log
from tokenizer import get_encoding

# 10 steps of the tiny preset on CPU in float32; 512 tokens per step: 2 micro-steps in one process, 1 in each of two
FLAGS = ["--preset", "tiny", "--device", "cpu", "--dtype", "float32", "--max-steps", "10", "--val-every", "5",
         "--checkpoint-every", "5", "--sample-every", "0", "--hellaswag-every", "0"]
# Measured on this run over tests/data/corpus.jsonl (max abs difference to one process): train losses 0 (DDP) and
# 1.9e-6 (FSDP), val losses 0 and 9.5e-7, for losses near 10.8; so rtol 1e-5 (1e-4 absolute) leaves 50x headroom.
LOSS_RTOL = 1e-5
# Final weights (|w| up to ~1): 9.0e-6 (DDP) and 1.3e-5 (FSDP); 3.5e-5 and 4.7e-5 on an Intel Xeon with AMX, whose
# train and val losses differed by 9.5e-7 (DDP) and 1.9e-6 (FSDP). Adam divides by each gradient's running RMS, so
# a weight whose gradient is near zero turns reduction noise into a visible step (8.9e-5 for FSDP on other text,
# an earlier corpus slice): 1e-3 leaves 75x headroom here, 10x there.
WEIGHT_ATOL = 1e-3


def torchrun(shards, out, *flags, nproc=2, timeout=240) -> subprocess.CompletedProcess:
    """train_gpt.py in nproc processes, launched as a user would: python -m torch.distributed.run."""
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={nproc}",
           str(REPO / "train_gpt.py"), *FLAGS, "--data-dir", str(shards), "--out-dir", str(out), *flags]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}  # one thread per process: two processes on two cores
    return subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=timeout, cwd=REPO)


def train_ok(shards, out, *flags, **kw) -> None:
    """torchrun, which must succeed."""
    p = torchrun(shards, out, *flags, **kw)
    assert p.returncode == 0, p.stdout[-2000:] + p.stderr[-4000:]


def weights(out, step=10) -> dict:
    """The model weights of the checkpoint at `step`."""
    return torch.load(out / f"ckpt_{step:06d}.pt", weights_only=True)["model"]


def assert_same_training(a, b, weight_atol=WEIGHT_ATOL) -> None:
    """Train and val losses of every step, and the final weights, agree within the tolerances above."""
    for name in ("train_loss", "val_loss"):
        la, lb = metric(read_log(a), name), metric(read_log(b), name)
        assert sorted(la) == sorted(lb), name
        torch.testing.assert_close(torch.tensor([lb[s] for s in sorted(la)], dtype=torch.float64),
                                   torch.tensor([la[s] for s in sorted(la)], dtype=torch.float64),
                                   rtol=LOSS_RTOL, atol=0, msg=lambda m: f"{name}: {m}")
    wa, wb = weights(a), weights(b)
    assert wa.keys() == wb.keys()
    for k in wa:
        torch.testing.assert_close(wb[k], wa[k], rtol=0, atol=weight_atol, msg=lambda m: f"{k}: {m}")


@pytest.fixture(scope="module")
def one(corpus_shards, tmp_path_factory):
    """The reference: one process, in this one."""
    out = tmp_path_factory.mktemp("one")
    train_gpt.main([*FLAGS, "--data-dir", str(corpus_shards), "--out-dir", str(out)])
    return out


@pytest.fixture(scope="module")
def ddp(corpus_shards, tmp_path_factory):
    """Two processes, DDP."""
    out = tmp_path_factory.mktemp("ddp")
    train_ok(corpus_shards, out)
    return out


# FSDP with HellaSwag on 65 examples (33 for one process, 32 for the other: two batches against one without
# padding, a deadlock) and samples, both in every process at steps 0 and 10
FSDP_FLAGS = ["--fsdp", "--hellaswag-every", "10", "--hellaswag-limit", "65", "--hellaswag-data", str(HELLASWAG),
              "--sample-every", "10", "--num-samples", "2"]


@pytest.fixture(scope="module")
def fsdp(corpus_shards, tmp_path_factory):
    """Two processes, FSDP_FLAGS."""
    out = tmp_path_factory.mktemp("fsdp")
    train_ok(corpus_shards, out, *FSDP_FLAGS)
    return out


@pytest.mark.slow
def test_two_processes_train_like_one(one, ddp):
    """DDP on two processes: the same train and val losses and final weights as one process (see LOSS_RTOL)."""
    assert_same_training(one, ddp)
    assert read_log(ddp)[0]["world_size"] == 2
    assert torch.load(ddp / "ckpt_000010.pt", weights_only=True)["world_size"] == 2


@pytest.mark.slow
def test_fsdp_trains_like_one_process(one, fsdp):
    """FSDP on two processes: the same losses and weights as one process; HellaSwag and samples, which every
    process takes part in, are logged once each."""
    assert_same_training(one, fsdp)
    assert metric(read_log(fsdp), "hellaswag_n") == {0: 65, 10: 65}
    samples = [e for e in read_log(fsdp) if "samples" in e]
    assert [e["step"] for e in samples] == [0, 10] and all(len(e["samples"]) == 2 for e in samples)


@pytest.mark.slow
def test_fsdp_checkpoint_is_a_plain_one(one, fsdp):
    """An FSDP checkpoint loads in one process: the model with model_from_checkpoint, scoring what the run
    logged (padding examples not counted), and the optimizer state in a plain optimizer, as one process saves it."""
    ckpt = load_checkpoint(str(fsdp / "ckpt_000010.pt"))
    model = model_from_checkpoint(ckpt)
    assert model.lm_head.weight is model.transformer.wte.weight
    examples = hellaswag.load_examples(str(HELLASWAG), 65)
    hs = hellaswag.evaluate(model, examples, get_encoding())
    log = read_log(fsdp)
    assert (hs["acc"], hs["acc_norm"]) == (metric(log, "hellaswag_acc")[10], metric(log, "hellaswag_acc_norm")[10])
    cfg = train_gpt.parse_config(FLAGS)
    optimizer = train_gpt.configure_optimizer(model, cfg, "cpu")
    optimizer.load_state_dict(ckpt["optimizer"])
    ref = torch.load(one / "ckpt_000010.pt", weights_only=True)["optimizer"]
    assert ckpt["optimizer"]["param_groups"] == ref["param_groups"]
    assert ckpt["optimizer"]["state"].keys() == ref["state"].keys()
    for i, state in ref["state"].items():
        for k, v in state.items():
            torch.testing.assert_close(ckpt["optimizer"]["state"][i][k], v, rtol=0, atol=WEIGHT_ATOL)


@pytest.mark.slow
def test_fsdp_resume_is_the_same_run(corpus_shards, fsdp, tmp_path):
    """An FSDP run resumed with --fsdp from its step-5 checkpoint is the uninterrupted one, bit for bit: losses,
    samples, weights and optimizer state."""
    shutil.copytree(fsdp, tmp_path / "run")
    (tmp_path / "run" / "ckpt_000010.pt").unlink()
    train_ok(corpus_shards, tmp_path / "run", *FSDP_FLAGS, "--resume")
    assert_same_run(fsdp, tmp_path / "run", 10)


@pytest.mark.slow
def test_resume_with_another_number_of_processes_is_refused(corpus_shards, ddp, tmp_path):
    """A checkpoint of two processes resumed by one: one line saying how many to use, and nothing changed."""
    shutil.copytree(ddp, tmp_path / "run")
    before = {p.name: (p.stat().st_mtime_ns, p.read_bytes()) for p in (tmp_path / "run").iterdir()}
    with pytest.raises(SystemExit) as e:
        train_gpt.main([*FLAGS, "--data-dir", str(corpus_shards), "--out-dir", str(tmp_path / "run"), "--resume"])
    msg = str(e.value)
    assert msg.startswith("error: ") and "\n" not in msg
    assert "written by 2 process(es), this run has 1: resume it with 2" in msg
    assert {p.name: (p.stat().st_mtime_ns, p.read_bytes()) for p in (tmp_path / "run").iterdir()} == before


def test_fsdp_needs_torchrun(corpus_shards, tmp_path):
    """--fsdp in a single process started without torchrun: one line saying how to launch it."""
    with pytest.raises(SystemExit, match="--fsdp shards the model across processes started by torchrun"):
        train_gpt.main([*FLAGS, "--data-dir", str(corpus_shards), "--out-dir", str(tmp_path), "--fsdp"])


@pytest.mark.slow
def test_ddp_modern_trains_like_one_process(corpus_shards, tmp_path):
    """Two processes (DDP, gloo) with Muon take the steps of one: each orthogonalises the same averaged
    gradient."""
    flags = ["--recipe", "modern", "--warmup-steps", "2"]
    train_gpt.main([*FLAGS, *flags, "--data-dir", str(corpus_shards), "--out-dir", str(tmp_path / "one")])
    train_ok(corpus_shards, tmp_path / "two", *flags)
    assert_same_training(tmp_path / "one", tmp_path / "two")


# A process under torchrun taking signals: the terminal's Ctrl-C, then torchrun's copy of it a moment later
# (torchrun forwards what it gets to its processes), then, a second on, a Ctrl-C pressed again
CTRL_C_UNDER_TORCHRUN = """
import os, signal, sys, time
from signals import StopSignals
with StopSignals() as signals:
    os.kill(os.getpid(), signal.SIGINT)  # the terminal's, to every process in the foreground
    os.kill(os.getpid(), signal.SIGINT)  # torchrun's copy
    print("stopping with a checkpoint", flush=True)
    time.sleep(1.1)
    os.kill(os.getpid(), signal.SIGINT)  # pressed again
    print("still running", flush=True)
"""


@pytest.mark.slow
def test_ctrl_c_forwarded_by_torchrun_is_not_a_second_one():
    """One Ctrl-C reaches a process under torchrun twice, from the terminal and forwarded by torchrun: it stops
    the run with a checkpoint; only a Ctrl-C pressed again exits at once."""
    p = subprocess.run([sys.executable, "-c", CTRL_C_UNDER_TORCHRUN], env={**os.environ, "RANK": "0"}, cwd=REPO,
                       capture_output=True, text=True, timeout=60)
    assert p.stdout == "stopping with a checkpoint\n", p.stderr
    assert p.returncode == 130 and "second interrupt: exiting now" in p.stderr


# Two processes, where a Ctrl-C reaches process 1 only (kill -INT of its pid)
CTRL_C_TO_ONE_PROCESS = """
import os, signal
import torch.distributed as dist
from signals import StopSignals
dist.init_process_group("gloo")
with StopSignals() as signals:
    if dist.get_rank() == 1:
        os.kill(os.getpid(), signal.SIGINT)
    print(f"process {dist.get_rank()}: stop {signals.stop('cpu')}, {signals.name}", flush=True)
dist.destroy_process_group()
"""


@pytest.mark.slow
def test_a_signal_to_one_process_is_every_process_signal(tmp_path):
    """A Ctrl-C to one process stops them all, each logging SIGINT (not SIGTERM) and exiting with its status."""
    script = tmp_path / "ctrl_c.py"
    script.write_text(CTRL_C_TO_ONE_PROCESS)
    p = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
                        str(script)], env={**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO)},
                       capture_output=True, text=True, timeout=120, cwd=REPO)
    assert p.returncode == 0, p.stderr[-3000:]
    # the two processes share stdout: their lines may interleave, so each is found on its own
    found = re.findall(r"process \d: stop (?:True|False), SIG[A-Z]+", p.stdout)
    assert sorted(found) == ["process 0: stop True, SIGINT", "process 1: stop True, SIGINT"]
