"""python -m pytest tests/test_train_options.py -v

--init-from (fine-tuning a Hugging Face GPT-2), --compile, the ETA, the memory setting of CPU runs and the
attention setting of HellaSwag and sampling.
"""

import io
import json
import shutil
import subprocess
import sys
from contextlib import contextmanager
from types import SimpleNamespace

import pytest
import torch
import transformers  # requirements-dev.txt: the Hugging Face model to fine-tune
from torch.nn.attention import SDPBackend, sdpa_kernel

import generate
import hellaswag
import run_log
import train_gpt
from checkpoint import load_checkpoint, model_from_checkpoint
from conftest import HELLASWAG, REPO, TINY, assert_same_run, read_log, train
from device import varying_shapes
from model import GPT
from run_log import format_duration
from shards import PROGRESS_FILE
from tokenizer import get_encoding


@pytest.fixture(scope="module")
def hf_dir(tmp_path_factory):
    """A random Hugging Face GPT-2 with GPT-2's vocabulary and a 64-token context, saved as a folder."""
    torch.manual_seed(11)
    config = transformers.GPT2Config(vocab_size=50257, n_positions=64, n_embd=32, n_layer=2, n_head=4)
    out = tmp_path_factory.mktemp("hf_gpt2")
    transformers.GPT2LMHeadModel(config).save_pretrained(out)
    return out


def test_init_from_starts_at_the_pretrained_weights(corpus_shards, hf_dir, tmp_path, capsys):
    """--init-from DIR trains the Hugging Face model's weights: its shape replaces the preset's, the step-0
    val loss is that model's, and a one-step run at a negligible learning rate ends with its weights."""
    out = tmp_path / "run"
    train(corpus_shards, out, "--init-from", str(hf_dir), "--max-steps", "1", "--warmup-steps", "0",
          "--max-lr", "1e-12", "--min-lr", "1e-12", "--weight-decay", "0", "--val-every", "1")
    log = read_log(out)
    config = log[0]["config"]
    assert (config["n_layer"], config["n_head"], config["n_embd"], config["vocab_size"], config["block_size"]) == \
        (2, 4, 32, 50257, 64)
    ckpt = load_checkpoint(str(out / "ckpt_000001.pt"))
    pretrained = GPT.from_pretrained(str(hf_dir))
    for k, v in pretrained.state_dict().items():
        torch.testing.assert_close(ckpt["model"][k], v, rtol=0, atol=1e-9)
    # the val loss at step 0 is the pretrained model's on the same val tokens
    loader = train_gpt.DataLoaderLite(str(corpus_shards), "val", 4, 64)
    want = train_gpt.evaluate_val(pretrained, loader, 2, "cpu", torch.float32)
    assert [e["val_loss"] for e in log if "val_loss" in e][0] == pytest.approx(want, abs=1e-6)
    # the checkpoint is a plain one: generate.py / hellaswag.py read it without transformers
    assert model_from_checkpoint(ckpt).config.n_embd == 32


@pytest.mark.slow  # two training runs, a few seconds
def test_init_from_resumes(corpus_shards, hf_dir, tmp_path):
    """A fine-tuning run stopped at a checkpoint and resumed continues from the checkpoint, not from the
    pretrained weights: it is the uninterrupted run, bit for bit."""
    flags = ["--init-from", str(hf_dir), "--max-steps", "6", "--val-every", "3", "--checkpoint-every", "3"]
    train(corpus_shards, tmp_path / "a", *flags)
    shutil.copytree(tmp_path / "a", tmp_path / "b")
    (tmp_path / "b" / "ckpt_000006.pt").unlink()  # as if stopped after step 3
    train(corpus_shards, tmp_path / "b", *flags, "--resume")
    assert_same_run(tmp_path / "a", tmp_path / "b", 6)


@pytest.mark.parametrize("value,message", [
    ("no/such/folder", "error: cannot load --init-from no/such/folder"),
])
def test_init_from_errors(corpus_shards, tmp_path, value, message, hub_offline):
    """A model that can't be loaded is one line of error, and nothing is written."""
    with pytest.raises(SystemExit) as e:
        train(corpus_shards, tmp_path / "run", "--init-from", value)
    assert str(e.value.code).startswith(message) and "\n" not in str(e.value.code)
    assert not (tmp_path / "run").exists()


def test_init_from_a_file_says_what_it_takes(corpus_shards, tmp_path):
    """--init-from a file (a checkpoint of ours, a weights file): one line saying it takes a GPT-2 name or a
    Hugging Face folder, not transformers' 'the config file ... is not a valid JSON file'."""
    (tmp_path / "ckpt_000004.pt").write_bytes(b"PK\x03\x04 not a config")
    with pytest.raises(SystemExit) as e:
        train(corpus_shards, tmp_path / "run", "--init-from", str(tmp_path / "ckpt_000004.pt"))
    assert str(e.value.code) == (f"error: cannot load --init-from {tmp_path / 'ckpt_000004.pt'}: {tmp_path / 'ckpt_000004.pt'} "
                                 "is a file, not a GPT-2 name (gpt2, gpt2-medium, gpt2-large, gpt2-xl) or a Hugging Face "
                                 "GPT-2 folder")
    assert not (tmp_path / "run").exists()


def test_init_from_context_too_short(corpus_shards, hf_dir, tmp_path):
    """--seq-len longer than the pretrained model's context is refused with the flag to change."""
    with pytest.raises(SystemExit) as e:
        train(corpus_shards, tmp_path / "run", "--init-from", str(hf_dir), "--seq-len", "128",
              "--total-batch-size", "512")
    assert str(e.value.code) == f"error: --seq-len 128 is longer than the context of --init-from {hf_dir} (64 tokens)"


@pytest.mark.slow
def test_compile_keeps_val_hellaswag_and_samples(corpus_shards, tmp_path, capsys):
    """--compile: the training losses follow the eager run's, and val loss and HellaSwag give the eager run's
    results (they use the model as is); samples are still drawn (their tokens may part on float32 noise)."""
    flags = ["--max-steps", "4", "--warmup-steps", "2", "--val-every", "2", "--hellaswag-every", "4", "--hellaswag-limit", "8",
             "--hellaswag-data", str(HELLASWAG), "--sample-every", "4", "--checkpoint-every", "4"]
    train(corpus_shards, tmp_path / "eager", *flags)
    train(corpus_shards, tmp_path / "compiled", *flags, "--compile")
    eager, compiled = read_log(tmp_path / "eager"), read_log(tmp_path / "compiled")
    for name in ("train_loss", "val_loss", "hellaswag_acc_norm"):
        a = [e[name] for e in eager if name in e]
        b = [e[name] for e in compiled if name in e]
        assert len(a) == len(b) > 0
        # kernels fused differently round differently: float32 noise, amplified a little by Adam
        torch.testing.assert_close(torch.tensor(b), torch.tensor(a), rtol=1e-4, atol=1e-4)
    assert [e for e in compiled if "samples" in e]
    assert "eta" in capsys.readouterr().out


def test_hellaswag_contexts_cut_to_the_model_are_counted(capsys):
    """A model whose context is shorter than some HellaSwag examples (tiny's 64 tokens) scores them with their
    contexts cut from the left: the run says how many, once, when it reads the examples."""
    cfg = train_gpt.preset_config("tiny")
    cfg.hellaswag_every, cfg.hellaswag_data, cfg.hellaswag_limit = 10, str(HELLASWAG), 50
    enc = get_encoding()
    examples = hellaswag.examples_for_training(cfg.hellaswag_data, cfg.hellaswag_limit, enc, cfg.block_size)
    cut = sum(len(enc.encode_ordinary(ex["ctx"])) + max(len(enc.encode_ordinary(" " + e)) for e in ex["endings"]) > 64
              for ex in examples)  # context + its longest ending past the model's 64 tokens
    assert 0 < cut < 50
    assert capsys.readouterr().out.strip() == (f"note: {cut} of 50 HellaSwag examples are longer than the model's "
                                               "64-token context: their contexts lose tokens from the left")


@pytest.mark.parametrize("val_steps,note", [(63, False), (64, True)])
def test_val_steps_past_the_val_shards_are_noted(corpus_shards, capsys, val_steps, note):
    """More --val-steps than the val shards hold batches: val loss reads some twice, and the run says so."""
    cfg = train_gpt.preset_config("tiny")
    cfg.data_dir, cfg.val_steps = str(corpus_shards), val_steps
    train_loader, val_loader = train_gpt.make_loaders(cfg, rank=0, world_size=1)
    assert val_loader.rounds == 63  # the val shard's 16,384 tokens: 63 batches of 4 x 64 (+1 for the last target)
    out = capsys.readouterr().out
    assert ("note: the val shards hold 63 batches of 4 x 64: the 64 of --val-steps read some of them twice" in out) == note


@pytest.mark.parametrize("complete", [True, False, None])
def test_shards_of_an_unfinished_fineweb_job_are_noted(corpus_shards, tmp_path, capsys, complete):
    """Shards of a fineweb.py job killed (or still running) before the end of its input: the run says it trains
    on the shards written so far. A finished job's, or a folder without fineweb.py's manifest: no note."""
    data = tmp_path / "data"
    shutil.copytree(corpus_shards, data)
    manifest = data / PROGRESS_FILE
    if complete is None:
        manifest.unlink()
    else:
        manifest.write_text(json.dumps({**json.loads(manifest.read_text()), "complete": complete}))
    cfg = train_gpt.preset_config("tiny")
    cfg.data_dir = str(data)
    train_gpt.make_loaders(cfg, rank=0, world_size=1)
    note = (f"note: {data} is from a fineweb.py job that has not reached the end of its input: training reads the 6 "
            "train shards written so far (run the same fineweb.py again to finish)")
    assert (note in capsys.readouterr().out) == (complete is False)


def test_format_duration():
    """The ETA reads as hours and minutes, minutes and seconds, or seconds."""
    assert format_duration(3725) == "1h02m"
    assert format_duration(125) == "2m05s"
    assert format_duration(42.4) == "42s"


def test_eta_counts_down(corpus_shards, tmp_path, capsys, monkeypatch):
    """From the second step on, each step line ends with an ETA to the last step: the steps left times the mean
    time of the steps since the first, whose warm-up doesn't count; the first two lines have none. ETA's clock
    moves 100 s in step 0, then 4, 10, 7 and 3 s: 4 s x 4 steps left at step 2, 7 s x 3 at step 3, 7 s x 2 at
    step 4, 6 s x 1 at step 5."""
    clock = [0.0]
    monkeypatch.setattr(run_log, "time", SimpleNamespace(perf_counter=lambda: clock[0]))  # ETA's clock only
    real_step = train_gpt.train_step

    def timed_step(**kw):
        clock[0] += {0: 100.0, 1: 4.0, 2: 10.0, 3: 7.0, 4: 3.0, 5: 1.0}[kw["step"]]
        return real_step(**kw)
    monkeypatch.setattr(train_gpt, "train_step", timed_step)
    train(corpus_shards, tmp_path / "run", "--max-steps", "6", "--val-every", "0", "--checkpoint-every", "0")
    lines = [line for line in capsys.readouterr().out.splitlines() if line.startswith("step ")]
    assert len(lines) == 6
    assert "eta" not in lines[0] and "eta" not in lines[1]  # step 1's pace is not known before it ends
    assert [line.partition(" | eta ")[2] for line in lines[2:]] == ["16s", "21s", "14s", "6s"]


FAULTS = """
import resource, sys, torch
sys.path.insert(0, {repo!r})
from device import keep_freed_memory
from model import GPT, GPTConfig
if {keep}:
    keep_freed_memory()
model = GPT({tiny!r})  # tests/conftest.py's TINY
x = torch.randint(0, 50257, (8, 64))  # the head's chunk of logits, 512 x 50,304 floats: 103 MB, freed each step
def step():
    before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    _, loss = model(x, x)
    loss.backward()
    return resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before
print(sum([step() for _ in range(5)][2:]))  # the faults of steps 3 to 5, once the first ones have warmed up
"""


@pytest.mark.slow
def test_keep_freed_memory_reuses_pages():
    """With keep_freed_memory (every CPU run), the large tensors of a training step reuse the pages freed by
    the step before; without it, every step page-faults them in again (~30k faults a step here)."""

    def faults(keep: bool) -> int:  # in a fresh process each: the allocator's settings are process-wide
        out = subprocess.run([sys.executable, "-c", FAULTS.format(repo=str(REPO), keep=keep, tiny=TINY)],
                             capture_output=True, text=True, check=True)
        return int(out.stdout.strip())
    without, with_ = faults(False), faults(True)
    assert without > 60_000  # 3 steps of ~25k pages of logits each, at the least
    for _ in range(2):  # a shared host sometimes takes pages back mid-run (25k faults once): up to two more tries
        if with_ < without / 4:
            break
        with_ = min(with_, faults(True))
    assert with_ < without / 4, (with_, without)


def test_varying_shapes_leaves_out_cudnn_attention_on_cuda_only():
    """HellaSwag and sampling attend over a new shape every call: on CUDA cuDNN's attention, which builds a
    plan per shape, is turned off for them and every other backend stays as the caller set it (also inside
    a caller's own choice of backends); on a CPU nothing changes; on the way out, all is as before."""
    enabled = {"cudnn": torch.backends.cuda.cudnn_sdp_enabled, "flash": torch.backends.cuda.flash_sdp_enabled,
               "efficient": torch.backends.cuda.mem_efficient_sdp_enabled, "math": torch.backends.cuda.math_sdp_enabled}

    def state():
        return {name: on() for name, on in enabled.items()}
    before = state()
    assert before["cudnn"]  # PyTorch's default, which the test needs to see changed
    with varying_shapes("cuda"):
        assert state() == {**before, "cudnn": False}
    with varying_shapes("cpu"):
        assert state() == before
    assert state() == before
    with sdpa_kernel([SDPBackend.MATH, SDPBackend.CUDNN_ATTENTION]):  # a caller's choice: flash and efficient off
        chosen = state()
        with varying_shapes("cuda"):
            assert state() == {**chosen, "cudnn": False} and not state()["flash"]
        assert state() == chosen
    assert state() == before


def test_hellaswag_and_sampling_enter_varying_shapes(monkeypatch):
    """score_examples and both samplers run their attention inside varying_shapes, given their device type."""
    entered = []

    @contextmanager
    def recording(device_type):
        entered.append(device_type)
        yield
    monkeypatch.setattr(hellaswag, "varying_shapes", recording)
    monkeypatch.setattr(generate, "varying_shapes", recording)
    model, enc = GPT(TINY).eval(), get_encoding()
    hellaswag.score_examples(model, hellaswag.load_examples(HELLASWAG, limit=2), enc, "cpu", batch_size=2)
    assert entered == ["cpu"]  # one batch
    generate.sample_text(model, enc, "Hello", 2, 3, top_k=5, seed=0, device="cpu")
    generate.stream_sample(model, enc, "Hello", 3, top_k=5, top_p=None, seed=0, device="cpu",
                           dtype=torch.float32, out=io.StringIO())
    assert entered == ["cpu"] * 3


@pytest.mark.parametrize("argv, notes", [
    (["--hellaswag-limit", "5", "--muon-lr", "0.1"], ["--hellaswag-limit does nothing with --hellaswag-every 0",
                                                     "--muon-lr does nothing with --optimizer adamw"]),
    (["--sample-len", "3", "--wandb-run", "r", "--decay-frac", "0.2"], [
        "--sample-len does nothing with --sample-every 0", "--wandb-run does nothing with no --wandb",
        "--decay-frac does nothing with --schedule cosine"]),
    (["--val-every", "0", "--val-steps", "3"], ["--val-steps does nothing with --val-every 0"]),
    (["--muon-lr", "0.02"], ["--muon-lr does nothing with --optimizer adamw"]),  # given, though the default value
    (["--hellaswag-lim", "5"], ["--hellaswag-limit does nothing with --hellaswag-every 0"]),  # abbreviated
    (["--hellaswag-every", "2", "--hellaswag-limit", "5", "--optimizer", "muon", "--muon-lr", "0.1", "--schedule", "wsd",
      "--decay-frac", "0.2", "--sample-every", "3", "--sample-len", "4", "--wandb", "p", "--wandb-run", "r"], []),
    (["--recipe", "modern"], []),  # the recipe sets --muon-lr and --decay-frac, and switches both on
])
def test_a_flag_of_a_feature_switched_off_gets_a_note(capsys, argv, notes):
    """A flag that tunes a feature switched off (the tiny preset has no HellaSwag or samples) does nothing: a note
    says so, once per flag, and the run goes on; with the feature on, or the flag not given, there is none."""
    train_gpt.parse_config(["--preset", "tiny"] + argv)
    assert capsys.readouterr().out.splitlines() == [f"note: {n}" for n in notes]


def test_the_note_on_an_idle_flag_comes_from_the_first_process_only(capsys, monkeypatch):
    """Under torchrun every process parses the flags; only the first one prints the note."""
    monkeypatch.setenv("RANK", "1")
    train_gpt.parse_config(["--preset", "tiny", "--muon-lr", "0.1"])
    assert capsys.readouterr().out == ""
