"""python -m pytest tests/test_train.py -v

train_gpt.py end to end on the committed corpus: its configuration and schedule, a 40-step run (val loss,
samples, HellaSwag, checkpoints), the golden losses of the tiny preset, and generate.py on its checkpoints.
Exact resume is tested in test_resilience.py.
"""

import json
import math
import os
import re
import shutil
import subprocess
import sys
from dataclasses import asdict
from pathlib import Path

import pytest
import torch

import generate
import hellaswag
import train_gpt
from conftest import REPO, metric, read_log, train
from train_gpt import TrainConfig, get_lr, parse_config

GOLDEN = Path(__file__).resolve().parent / "golden" / "tiny_losses.txt"
GOLDEN_STEPS = 10  # compared within GOLDEN_ATOL, as llm.c compares its first steps
GOLDEN_ATOL = 1e-4


def test_defaults_are_the_reference_run():
    """With no flags, train_gpt.py is the reference run: seed model, 32,768 tokens/step, 12,207 steps."""
    cfg = parse_config([])
    assert cfg == TrainConfig()
    assert (cfg.n_layer, cfg.n_head, cfg.n_embd, cfg.block_size, cfg.vocab_size) == (4, 8, 256, 1024, 50304)
    assert (cfg.batch_size, cfg.seq_len, cfg.total_batch_size) == (4, 512, 32768)
    assert (cfg.max_steps, cfg.warmup_steps, cfg.max_lr, cfg.min_lr) == (12207, 469, 6e-4, 6e-5)
    assert (cfg.weight_decay, cfg.grad_clip, cfg.checkpoint_every) == (0.1, 1.0, 5000)


def test_preset_then_flags():
    """--preset sets every field; flags given explicitly override it, whatever their order."""
    cfg = parse_config(["--max-steps", "7", "--preset", "tiny", "--no-resume"])
    want = asdict(train_gpt.preset_config("tiny"))
    want["max_steps"] = 7
    assert asdict(cfg) == want
    assert parse_config(["--preset", "gpt2"]).n_layer == 12


def test_lr_schedule():
    """Linear warmup from max_lr/warmup, max_lr at the end of warmup, cosine down to min_lr at max_steps."""
    cfg = TrainConfig()
    assert get_lr(0, cfg) == pytest.approx(6e-4 / 469)
    assert get_lr(468, cfg) == pytest.approx(6e-4)  # the last warmup step
    assert get_lr(469, cfg) == pytest.approx(6e-4)  # cosine starts at its top
    mid = (469 + 12207) // 2
    assert get_lr(mid, cfg) == pytest.approx((6e-4 + 6e-5) / 2, rel=1e-3)
    assert get_lr(12206, cfg) == pytest.approx(6e-5, rel=1e-6)  # the last update
    assert get_lr(12207, cfg) == pytest.approx(6e-5)
    lrs = [get_lr(s, cfg) for s in range(469, 12208)]
    assert all(a >= b for a, b in zip(lrs, lrs[1:]))


@pytest.fixture(scope="module")
def trained(corpus_shards, hellaswag_data, tmp_path_factory):
    """fineweb.py's shards of the committed corpus, then 40 steps of the tiny preset."""
    out = tmp_path_factory.mktemp("run")
    train(corpus_shards, out, "--max-steps", "40", "--val-every", "20", "--sample-every", "20",
          "--checkpoint-every", "25", "--hellaswag-every", "20", "--hellaswag-limit", "40",
          "--hellaswag-data", str(hellaswag_data))
    return out


def test_end_to_end_val_loss_falls(trained):
    """On real text, val loss falls well below its starting value ln(50304) ~ 10.8."""
    val = metric(read_log(trained), "val_loss")
    assert sorted(val) == [0, 20, 40]
    assert abs(val[0] - math.log(50304)) < 0.3
    assert val[40] < val[0] - 2.0


def test_log_and_samples(trained):
    """log.jsonl has one train_loss per step 0..39, samples at the first step and the end."""
    log = read_log(trained)
    assert [e["step"] for e in log if "train_loss" in e] == list(range(40))
    samples = metric(log, "samples")
    assert sorted(samples) == [0, 20, 40]
    assert len(samples[40]) == 4 and all(s.startswith("Hello, I'm a language model,") for s in samples[40])
    assert log[0]["event"] == "start" and log[0]["config"]["preset"] == "tiny"


@pytest.mark.slow
def test_log_names_the_code(trained, tmp_path):
    """The start event names the code that ran: its git commit (+dirty when tracked files differ), or None for
    a copy of the code outside a git checkout (a downloaded archive)."""
    assert re.fullmatch(r"[0-9a-f]{40}(\+dirty)?", read_log(trained)[0]["git"])
    for name in ("run_log.py", "atomic_write.py", "errors.py"):  # run_log and the modules it imports
        shutil.copy(REPO / name, tmp_path)
    out = subprocess.run([sys.executable, "-c", "import run_log; print(run_log.source_version())"], cwd=tmp_path,
                         capture_output=True, text=True, check=True,
                         env={**os.environ, "GIT_CEILING_DIRECTORIES": str(tmp_path.parent)})  # no checkout above
    assert out.stdout.strip() == "None"


def test_hellaswag_in_training(trained):
    """HellaSwag is scored at the first step, every --hellaswag-every steps and at the end, and logged."""
    log = read_log(trained)
    assert sorted(metric(log, "hellaswag_acc_norm")) == [0, 20, 40]
    assert set(metric(log, "hellaswag_n").values()) == {40}
    for name in ("hellaswag_acc", "hellaswag_acc_norm"):
        assert all(0 <= v <= 1 and (v * 40).is_integer() for v in metric(log, name).values())


def test_hellaswag_offline_is_one_line(corpus_shards, tmp_path, monkeypatch):
    """Without --hellaswag-data and without network, training stops at once with one line saying what to do."""
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    monkeypatch.setattr(hellaswag, "VAL_URL", "http://127.0.0.1:9/hellaswag_val.jsonl")  # nothing listens there
    with pytest.raises(SystemExit) as e:
        train(corpus_shards, tmp_path / "out", "--hellaswag-every", "10")
    msg = str(e.value)
    assert msg.startswith("error: cannot download") and "pass --hellaswag-data FILE" in msg and "\n" not in msg
    assert "--hellaswag-every 0" in msg and not list((tmp_path / "out").glob("ckpt_*"))


def test_checkpoints(trained):
    """Checkpoints at every --checkpoint-every steps and the last; they load with weights_only=True."""
    assert sorted(p.name for p in trained.glob("ckpt_*")) == ["ckpt_000025.pt", "ckpt_000040.pt"]
    ckpt = torch.load(trained / "ckpt_000040.pt", weights_only=True)
    assert ckpt["step"] == 40 and ckpt["config"]["n_embd"] == 32
    assert {"model", "optimizer", "train_loader", "rng", "log_bytes"} <= set(ckpt)


def test_new_run_does_not_overwrite_a_run(corpus_shards, trained):
    """A run started without --resume in an out dir that holds checkpoints is refused."""
    before = {p.name: p.stat().st_mtime_ns for p in trained.iterdir()}
    with pytest.raises(SystemExit, match="continue it with --resume"):
        train(corpus_shards, trained, "--max-steps", "40")
    assert {p.name: p.stat().st_mtime_ns for p in trained.iterdir()} == before


def test_new_run_keeps_an_earlier_log_without_checkpoints(corpus_shards, tmp_path, capsys):
    """A new run in an out dir whose earlier run left a log but no checkpoint (--checkpoint-every 0, or killed
    before its first) keeps that log as log.1.jsonl, then log.2.jsonl, ...: it used to be emptied, and with
    it the earlier run's only record."""
    out = tmp_path / "out"
    logs = []
    for steps in ("3", "2", "4"):
        train(corpus_shards, out, "--max-steps", steps, "--warmup-steps", "1", "--checkpoint-every", "0",
              *(["--resume"] if steps == "4" else []))
        logs.append((out / "log.jsonl").read_text())
        assert json.loads(logs[-1].splitlines()[-1])["step"] == int(steps)  # this run's log, whole: its last val loss
    assert sorted(p.name for p in out.iterdir()) == ["log.1.jsonl", "log.2.jsonl", "log.jsonl"]
    assert [(out / name).read_text() for name in ("log.1.jsonl", "log.2.jsonl")] == logs[:2]
    assert f"note: {out / 'log.jsonl'} of an earlier run, which left no checkpoint, is kept as {out / 'log.2.jsonl'}" \
        in capsys.readouterr().out


def test_new_run_drops_an_earlier_log_of_its_start_alone(corpus_shards, tmp_path, capsys):
    """An earlier run that stopped before its first step (W&B refused it, a bad flag for the device) logged its
    start event alone: the new run empties that log instead of keeping it as log.1.jsonl."""
    out = tmp_path / "out"
    out.mkdir()
    (out / "log.jsonl").write_text('{"step": 0, "event": "start", "config": {}}\n')
    train(corpus_shards, out, "--max-steps", "2", "--warmup-steps", "1", "--checkpoint-every", "0")
    assert sorted(p.name for p in out.iterdir()) == ["log.jsonl"]
    assert [e.get("event") for e in read_log(out)][:1] == ["start"] and len(read_log(out)) > 1
    assert "kept as" not in capsys.readouterr().out


def test_generate_is_deterministic(trained, capsys):
    """generate.py: the same seed gives the same text; another seed, other text; file or dir alike."""
    args = ["--num-samples", "2", "--max-new-tokens", "12", "--device", "cpu"]
    a = generate.main(["--checkpoint", str(trained), "--seed", "1", *args])
    b = generate.main(["--checkpoint", str(trained / "ckpt_000040.pt"), "--seed", "1", *args])
    c = generate.main(["--checkpoint", str(trained), "--seed", "2", *args])
    assert a == b and a != c
    assert len(a) == 2 and all(s.startswith("Hello, I'm a language model,") for s in a)
    assert "--- sample 1" in capsys.readouterr().out


def test_generate_errors(trained, tmp_path):
    """No checkpoint, or a prompt as long as the context, give a one-line error."""
    with pytest.raises(SystemExit, match="no checkpoint"):
        generate.main(["--checkpoint", str(tmp_path)])
    with pytest.raises(SystemExit, match="not found"):
        generate.main(["--checkpoint", str(tmp_path / "x.pt")])
    with pytest.raises(SystemExit, match="the model's context is 64"):
        generate.main(["--checkpoint", str(trained), "--prompt", "word " * 80, "--device", "cpu"])

# -----------------------------------------------------------------------------
# golden losses


@pytest.fixture
def deterministic():
    """torch.use_deterministic_algorithms(True) for the test, then as it was."""
    before = torch.are_deterministic_algorithms_enabled()
    torch.use_deterministic_algorithms(True)
    yield
    torch.use_deterministic_algorithms(before)


def test_golden_losses(corpus_shards, tmp_path, deterministic):
    """The tiny preset's train losses over 10 steps (warmup 5, then the cosine to min_lr) on the committed
    corpus (CPU, float32) are those of tests/golden/tiny_losses.txt within 1e-4; with UPDATE_GOLDEN=1 the
    test rewrites that file instead."""
    train(corpus_shards, tmp_path, "--max-steps", str(GOLDEN_STEPS), "--val-every", "0", "--checkpoint-every", "0")
    losses = metric(read_log(tmp_path), "train_loss")
    got = [losses[step] for step in range(GOLDEN_STEPS)]
    if os.environ.get("UPDATE_GOLDEN") == "1":
        GOLDEN.parent.mkdir(exist_ok=True)
        GOLDEN.write_text(
            f"# step train_loss: train_gpt.py --preset tiny --max-steps {GOLDEN_STEPS} --device cpu --dtype float32 "
            "on fineweb.py's shards of "
            "tests/data/corpus.jsonl (--shard-size 16384), torch.use_deterministic_algorithms(True); "
            "made by UPDATE_GOLDEN=1 python -m pytest tests/test_train.py -k golden\n"
            + "".join(f"{step} {loss!r}\n" for step, loss in enumerate(got)))
        return
    rows = [line.split() for line in GOLDEN.read_text().splitlines() if not line.startswith("#")]
    assert [int(step) for step, _ in rows] == list(range(GOLDEN_STEPS))
    want = [float(loss) for _, loss in rows]
    torch.testing.assert_close(torch.tensor(got, dtype=torch.float64), torch.tensor(want, dtype=torch.float64),
                               rtol=0, atol=GOLDEN_ATOL)
