"""python -m pytest tests/test_plot.py -v"""

import json
import math
import os

import matplotlib.image
import pytest

import plot_log
from plot_log import ema, read_log, x_values

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def write_log(run_dir, records, tail: str = "") -> str:
    """A log.jsonl as train_gpt.py's Logger writes it (one object per line), plus `tail` appended raw."""
    run_dir.mkdir(parents=True, exist_ok=True)
    path = run_dir / "log.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in records) + tail)
    return str(path)


def run_records(steps: int = 20, total_batch_size: int = 2048, hellaswag: bool = True) -> list[dict]:
    """A small run: a start event, a train loss every step, val every 5 steps, HellaSwag every 10."""
    recs = [{"step": 0, "event": "start", "config": {"preset": "seed", "total_batch_size": total_batch_size}}]
    for step in range(steps + 1):
        if step % 5 == 0:
            recs.append({"step": step, "val_loss": 10.0 - step / 10})
        if hellaswag and step % 10 == 0:
            recs.append({"step": step, "hellaswag_acc_norm": 0.25 + step / 1000, "hellaswag_acc": 0.25, "hellaswag_n": 100})
        if step % 10 == 0:
            recs.append({"step": step, "samples": ["Hello, I'm a language model, and"]})
        if step < steps:
            recs.append({"step": step, "train_loss": 10.5 - step / 10, "lr": 6e-4, "grad_norm": 1.0,
                         "dt_ms": 10.0, "tok_per_s": 1000.0})
    return recs


def test_read_log_series(tmp_path):
    """Each metric lands in its own list, sorted by step; samples and other fields are ignored."""
    log = read_log(write_log(tmp_path / "run", run_records(steps=20)))
    assert log["train_step"] == list(range(20))
    assert log["train_loss"] == [10.5 - s / 10 for s in range(20)]
    assert log["val_step"] == [0, 5, 10, 15, 20]
    assert log["val_loss"] == [10.0, 9.5, 9.0, 8.5, 8.0]
    assert log["hellaswag_step"] == [0, 10, 20]
    assert log["hellaswag_acc_norm"] == [0.25, 0.26, 0.27]
    assert log["hellaswag_acc"] == [0.25, 0.25, 0.25]
    assert log["total_batch_size"] == 2048


def test_later_duplicate_wins(tmp_path):
    """A step logged twice (a resume the log wasn't cut back for) keeps the later line's value, once."""
    recs = run_records(steps=10, hellaswag=False)
    recs += [{"step": 8, "event": "resume", "config": {"total_batch_size": 4096}},
             {"step": 8, "train_loss": 1.5}, {"step": 9, "train_loss": 1.25}, {"step": 10, "val_loss": 2.0}]
    log = read_log(write_log(tmp_path / "run", recs))
    assert log["train_step"] == list(range(10))
    assert log["train_loss"][7:] == [10.5 - 0.7, 1.5, 1.25]
    assert log["val_step"] == [0, 5, 10] and log["val_loss"] == [10.0, 9.5, 2.0]
    assert log["total_batch_size"] == 4096  # the resume event's config is the latest word


def test_half_written_last_line_skipped(tmp_path, capsys):
    """A run killed mid-write leaves half a line at the end: skipped with a warning, the rest kept."""
    path = write_log(tmp_path / "run", run_records(steps=10), tail='{"step": 10, "train_lo')
    log = read_log(path)
    assert log["train_step"] == list(range(10))
    assert f"warning: {path}:" in capsys.readouterr().err


def test_skipped_steps_counted(tmp_path):
    """A step whose update was skipped (non-finite loss) is recorded and shows in the summary."""
    recs = run_records(steps=10, hellaswag=False) + [{"step": 10, "skipped": "non-finite loss", "loss": "nan"}]
    log = read_log(write_log(tmp_path / "run", recs))
    assert log["skipped_step"] == [10]
    assert "1 skipped steps" in plot_log.summary("run", log)[0]


def test_tokens_are_step_times_batch(tmp_path):
    """--x tokens puts a value measured at step N at N * total_batch_size tokens."""
    log = read_log(write_log(tmp_path / "run", run_records(steps=20, total_batch_size=512)))
    assert x_values(log, "val", "tokens") == [0, 2560, 5120, 7680, 10240]
    assert x_values(log, "val", "step") == [0, 5, 10, 15, 20]


def test_ema():
    """The smoothing is debiased (a constant stays constant), lags a jump, and passes over NaN."""
    assert ema([3.0] * 5, span=10) == pytest.approx([3.0] * 5)
    smooth = ema([0.0] * 5 + [1.0] * 5, span=3)
    assert 0 < smooth[5] < 1 and smooth[-1] > smooth[5]
    assert ema([1.0, math.nan, 1.0], span=3) == pytest.approx([1.0, 1.0, 1.0])


def read_png(path) -> tuple[int, int]:
    """Check a file is a PNG that matplotlib can read back; return its (height, width)."""
    with open(path, "rb") as f:
        assert f.read(8) == PNG_MAGIC
    return matplotlib.image.imread(path).shape[:2]


def test_plot_one_run_default_out(tmp_path, capsys):
    """`plot_log.py run/` writes run/plot.png, 10 x 4 inches at 100 dpi, and prints summary and path."""
    write_log(tmp_path / "run", run_records(steps=20, hellaswag=False))
    out = plot_log.main([str(tmp_path / "run") + "/"])
    assert out == str(tmp_path / "run" / "plot.png")
    assert read_png(out) == (400, 1000)
    printed = capsys.readouterr().out
    assert "last step 20 (40,960 tokens)" in printed
    assert "val loss 8.0000 at step 20, best 8.0000 at step 20" in printed
    assert printed.rstrip().endswith(f"wrote {out}")


def test_plot_two_runs_with_hellaswag(tmp_path, capsys):
    """Two runs on one figure with a HellaSwag panel (wider), by tokens, with labels and a resumed log."""
    write_log(tmp_path / "a", run_records(steps=20))
    recs = run_records(steps=20, total_batch_size=4096) + [{"step": 15, "train_loss": 3.0}]
    write_log(tmp_path / "b", recs, tail='{"step": 20, "val_')
    out = plot_log.main([str(tmp_path / "a"), str(tmp_path / "b"), "--labels", "lr 6e-4", "lr 1e-3",
                         "--x", "tokens", "--smooth", "5", "--out", str(tmp_path / "both.png")])
    assert read_png(out) == (400, 1300)
    printed = capsys.readouterr().out
    assert "lr 6e-4: last step 20" in printed and "lr 1e-3: last step 20 (81,920 tokens)" in printed
    assert "hellaswag acc_norm 0.2700 at step 20" in printed


def test_out_without_extension_is_png(tmp_path, capsys):
    """`--out p1` writes p1.png (matplotlib's default format) and prints that path, not p1."""
    write_log(tmp_path / "run", run_records(steps=3, hellaswag=False))
    out = plot_log.main([str(tmp_path / "run"), "--out", str(tmp_path / "p1")])
    assert out == str(tmp_path / "p1.png")
    assert read_png(out) == (400, 1000)
    assert capsys.readouterr().out.rstrip().endswith(f"wrote {out}")


def test_nan_val_loss_is_never_the_best(tmp_path, capsys):
    """A NaN val loss (a diverged evaluation, logged as NaN) is reported as the last value, never as the best,
    even first in the log, where min() would keep it: a NaN compares as neither lower nor higher."""
    write_log(tmp_path / "run", [{"step": 0, "val_loss": math.nan}, {"step": 5, "val_loss": 7.5},
                                 {"step": 10, "val_loss": 6.5}, {"step": 15, "val_loss": math.nan}])
    plot_log.main([str(tmp_path / "run")])
    assert "val loss nan at step 15, best 6.5000 at step 10\n" in capsys.readouterr().out
    write_log(tmp_path / "all_nan", [{"step": 0, "val_loss": math.nan}])
    plot_log.main([str(tmp_path / "all_nan")])
    assert "val loss nan at step 0\n" in capsys.readouterr().out


def test_out_folder_gets_plot_png(tmp_path, capsys):
    """`--out plots/` (or an existing folder without the slash) writes plots/plot.png and says so, not a hidden
    plots/.png.png while printing plots/.png."""
    write_log(tmp_path / "run", run_records(steps=3, hellaswag=False))
    (tmp_path / "plots").mkdir()
    for given in (str(tmp_path / "plots") + "/", str(tmp_path / "plots")):
        out = plot_log.main([str(tmp_path / "run"), "--out", given])
        assert out == str(tmp_path / "plots" / "plot.png") and read_png(out) == (400, 1000)
        assert capsys.readouterr().out.rstrip().endswith(f"wrote {out}")
    assert sorted(os.listdir(tmp_path / "plots")) == ["plot.png"]


def test_failed_write_keeps_the_earlier_plot(tmp_path, monkeypatch, capsys):
    """A plot whose write fails half-way (a full disk, a kill) leaves the earlier plot.png whole, and no
    half-written file beside it."""
    write_log(tmp_path / "run", run_records(steps=3, hellaswag=False))
    out = plot_log.main([str(tmp_path / "run")])
    before = open(out, "rb").read()

    def half_then_full_disk(self, fname, **kw):
        with open(fname, "wb") as f:
            f.write(b"\x89PNG half")
        raise OSError(28, "No space left on device")
    monkeypatch.setattr(plot_log.Figure, "savefig", half_then_full_disk)
    with pytest.raises(SystemExit) as e:
        plot_log.main([str(tmp_path / "run")])
    assert str(e.value) == f"error: cannot write {out}: No space left on device"
    assert open(out, "rb").read() == before and sorted(os.listdir(tmp_path / "run")) == ["log.jsonl", "plot.png"]


@pytest.mark.parametrize("setup, argv, message", [
    (lambda d: None, ["missing"], "missing not found"),
    (lambda d: (d / "empty").mkdir(), ["empty"], "no log.jsonl in"),
    (lambda d: write_log(d / "r", run_records(steps=0)[:1] + [{"step": 0, "samples": []}]), ["r"],
     "holds no train_loss or val_loss entries"),
    (lambda d: write_log(d / "r", [{"step": 0, "val_loss": 1.0}] * 2, tail='not json\n{"step": 3, "val_loss": 1}\n'),
     ["r"], "log.jsonl:3: not JSON"),
    (lambda d: write_log(d / "r", [{"step": "3", "val_loss": 1.0}]), ["r"], "log.jsonl:1: no integer 'step'"),
    (lambda d: write_log(d / "r", [{"step": 3, "val_loss": "low"}]), ["r"], 'log.jsonl:1: val_loss is "low", not a number'),
    (lambda d: write_log(d / "r", [{"step": 3, "val_loss": 1.0}]), ["r", "--x", "tokens"], "no start or resume event"),
    (lambda d: write_log(d / "r", run_records(steps=3)), ["r", "--out", "nowhere/p.png"], "cannot write nowhere/p.png"),
    # Python's JSON parser recurses once per level: a deep line used to end in a RecursionError traceback
    (lambda d: write_log(d / "r", [{"step": 0, "val_loss": 1.0}], tail="[" * 100_000 + "\n"), ["r"],
     "log.jsonl:2: not JSON (nested too deeply)"),
    # a batch size or step that isn't a whole number in range: int() or matplotlib used to fail with a traceback
    (lambda d: write_log(d / "r", [{"step": 0, "event": "start", "config": {"total_batch_size": math.nan}},
                                   {"step": 1, "train_loss": 2.0}]), ["r"],
     "log.jsonl:1: total_batch_size is NaN, not a positive whole number"),
    (lambda d: write_log(d / "r", [{"step": 0, "event": "start", "config": {"total_batch_size": -5}},
                                   {"step": 1, "train_loss": 2.0}]), ["r"], "total_batch_size is -5, not a positive"),
    (lambda d: write_log(d / "r", [{"step": 10 ** 400, "train_loss": 2.0}]), ["r"], "log.jsonl:1: no integer 'step' (got 1000"),
    (lambda d: write_log(d / "r", [{"step": 0, "event": "start", "config": {"total_batch_size": 10 ** 400}},
                                   {"step": 1, "train_loss": 2.0}]), ["r"], "log.jsonl:1: total_batch_size is 1000"),
    (lambda d: write_log(d / "r", [{"step": 1, "train_loss": 10 ** 400}]), ["r"], "train_loss is 1000"),
    (lambda d: write_log(d / "r", [{"step": 0, "val_loss": 1.0}], tail='{"step": ' + "9" * 5000 + "}\n"), ["r"],
     "log.jsonl:2: not JSON (Exceeds the limit"),
])
def test_errors_are_one_line(tmp_path, monkeypatch, setup, argv, message):
    """Each bad input stops with one line `error: ...` naming what is wrong (and the file:line of a bad line)."""
    monkeypatch.chdir(tmp_path)
    setup(tmp_path)
    with pytest.raises(SystemExit) as e:
        plot_log.main(argv)
    text = str(e.value.code)
    assert text.startswith("error: ") and "\n" not in text
    assert message in text


@pytest.mark.parametrize("smooth", ["-1", str(10**20)])
def test_smooth_out_of_range_is_refused(tmp_path, capsys, smooth):
    """--smooth below 0, or so large that the EMA's weight rounds to zero (the smoothed line, all NaN, would
    silently not be drawn), is one argparse line; a span of a million still draws."""
    write_log(tmp_path / "r", run_records(steps=3))
    with pytest.raises(SystemExit) as e:
        plot_log.main([str(tmp_path / "r"), "--smooth", smooth])
    assert e.value.code == 2
    assert capsys.readouterr().err.strip().endswith(f"error: --smooth must be between 0 and 1,000,000, got {smooth}")
    assert all(math.isfinite(v) for v in ema([3.0, 2.0, 1.0], span=10**6))
