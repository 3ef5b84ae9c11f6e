"""
Plot a training run's log: train and val loss, and HellaSwag accuracy, against step (or tokens seen).

    python plot_log.py log/                                  # -> log/plot.png
    python plot_log.py log/ --x tokens --smooth 50 --out loss.png
    python plot_log.py runA/ runB/ --labels "lr 6e-4" "lr 1e-3" --out compare.png   # one colour per run

Each directory is a run's --out-dir; its log.jsonl holds one JSON object per line, written by train_gpt.py:
a "start" (or "resume") event with the run's config, then {"step", "train_loss", ...}, {"step", "val_loss"},
{"step", "hellaswag_acc_norm", "hellaswag_acc", ...} and a few others, which are ignored here.
The train loss is drawn twice: raw in a light colour, and smoothed by an exponential moving average.
The HellaSwag panel appears when a run has HellaSwag entries. A few summary lines per run go to stdout.
"""

import argparse
import json
import math
import os
import sys

import matplotlib
# a bare Figure, not pyplot: it renders with Agg straight to a file, so no window, no screen, no global state
from matplotlib.figure import Figure
from matplotlib.ticker import EngFormatter

from atomic_write import atomic_write
from errors import one_line

# -----------------------------------------------------------------------------
# reading a log


def _number(value, name: str, where: str) -> float:
    # bool is an int in Python, but a loss of `true` is a broken log, not 1.0
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise SystemExit(f"error: {where}: {name} is {json.dumps(value)[:40]}, not a number")
    try:
        return float(value)
    except OverflowError:  # an integer of hundreds of digits
        raise SystemExit(f"error: {where}: {name} is {str(value)[:40]}..., too large a number") from None


def read_log(path: str) -> dict:
    """Read a log.jsonl into sorted lists: train_step/train_loss, val_step/val_loss, hellaswag_step/
    hellaswag_acc_norm/hellaswag_acc, skipped_step, and total_batch_size (None if no start/resume event)."""
    try:
        with open(path, "rb") as f:
            data = f.read()
    except OSError as e:
        raise SystemExit(f"error: cannot read {path}: {e.strerror}") from None
    lines = data.split(b"\n")
    complete = data.endswith(b"\n")  # Logger writes a line and its newline together
    if complete:
        lines.pop()  # the empty piece after the final newline

    # step -> value per series: a step logged twice (a resumed run whose log wasn't cut back) keeps the later line
    train, val, hs, skipped = {}, {}, {}, set()
    total_batch_size = None
    for lineno, raw in enumerate(lines, start=1):
        where = f"{path}:{lineno}"
        if not raw.strip():
            continue
        try:
            rec = json.loads(raw.decode("utf-8"))
        except (ValueError, RecursionError) as e:  # ValueError: also an integer past Python's 4,300 digits
            if lineno == len(lines) and not complete:
                # a run killed in the middle of a write leaves half a line at the end: everything before it is good
                print(f"warning: {where}: skipping a half-written last line", file=sys.stderr)
                continue
            reason = ("not UTF-8" if isinstance(e, UnicodeDecodeError) else "not JSON (nested too deeply)"
                      if isinstance(e, RecursionError) else f"not JSON ({e.msg} at column {e.colno})"
                      if isinstance(e, json.JSONDecodeError) else f"not JSON ({one_line(e, limit=60)})")
            raise SystemExit(f"error: {where}: {reason}") from None
        if not isinstance(rec, dict):
            raise SystemExit(f"error: {where}: {json.dumps(rec)[:40]} is not a JSON object")
        step = rec.get("step")
        if isinstance(step, bool) or not isinstance(step, int) or not 0 <= step < 2**53:  # 2**53: exact as a float
            raise SystemExit(f"error: {where}: no integer 'step' (got {json.dumps(step)[:40]})")

        if rec.get("event") in ("start", "resume"):
            config = rec.get("config")
            if isinstance(config, dict) and "total_batch_size" in config:
                total_batch_size = _number(config["total_batch_size"], "total_batch_size", where)
                if not (1 <= total_batch_size < 2**53 and total_batch_size == int(total_batch_size)):
                    raise SystemExit(f"error: {where}: total_batch_size is {json.dumps(config['total_batch_size'])[:40]}, "
                                     "not a positive whole number")
                total_batch_size = int(total_batch_size)
        if "train_loss" in rec:
            train[step] = _number(rec["train_loss"], "train_loss", where)
        if "val_loss" in rec:
            val[step] = _number(rec["val_loss"], "val_loss", where)
        if "hellaswag_acc_norm" in rec:
            acc = rec.get("hellaswag_acc")  # older logs may lack it: a gap in the dashed line
            hs[step] = (_number(rec["hellaswag_acc_norm"], "hellaswag_acc_norm", where),
                        math.nan if acc is None else _number(acc, "hellaswag_acc", where))
        if "skipped" in rec:
            skipped.add(step)

    if not train and not val:
        raise SystemExit(f"error: {path} holds no train_loss or val_loss entries (has the run done a step yet?)")
    hs_steps = sorted(hs)
    return {
        "train_step": sorted(train), "train_loss": [train[s] for s in sorted(train)],
        "val_step": sorted(val), "val_loss": [val[s] for s in sorted(val)],
        "hellaswag_step": hs_steps,
        "hellaswag_acc_norm": [hs[s][0] for s in hs_steps], "hellaswag_acc": [hs[s][1] for s in hs_steps],
        "skipped_step": sorted(skipped),
        "total_batch_size": total_batch_size,
    }


def x_values(log: dict, series: str, x: str) -> list[int]:
    """The x coordinates of a series ("train", "val" or "hellaswag"): steps, or tokens = step * total_batch_size."""
    steps = log[f"{series}_step"]
    if x == "step":
        return steps
    # the value at step N is measured before step N's update, so the model had seen N * total_batch_size tokens
    return [s * log["total_batch_size"] for s in steps]


def ema(values: list[float], span: int) -> list[float]:
    """Exponential moving average over `span` points (alpha = 2 / (span + 1)), debiased so the start isn't
    pulled toward zero (TensorBoard's smoothing). Non-finite values are passed over, not averaged in."""
    beta = 1 - 2 / (span + 1)
    out, avg, weight = [], 0.0, 0.0
    for v in values:
        if math.isfinite(v):
            avg = beta * avg + (1 - beta) * v
            weight = beta * weight + (1 - beta)  # = 1 - beta^n: the mass the average has collected so far
        out.append(avg / weight if weight > 0 else math.nan)
    return out

# -----------------------------------------------------------------------------
# finding the runs


def find_log(run: str) -> str:
    """A run's dir -> its log.jsonl (a path to the log.jsonl itself is taken as is)."""
    if not os.path.exists(run):
        raise SystemExit(f"error: {run} not found")
    if os.path.isfile(run):
        return run
    path = os.path.join(run, "log.jsonl")
    if not os.path.isfile(path):
        raise SystemExit(f"error: no log.jsonl in {run} (is it a run's --out-dir?)")
    return path


def summary(label: str, log: dict) -> list[str]:
    """A couple of lines on where a run got to."""
    last = max(log["train_step"][-1:] + log["val_step"][-1:] + log["hellaswag_step"][-1:])
    tbs = log["total_batch_size"]
    line = f"{label}: last step {last}" + (f" ({last * tbs:,} tokens)" if tbs else "")
    if log["train_loss"]:
        line += f", train loss {log['train_loss'][-1]:.4f} at step {log['train_step'][-1]}"
    if log["skipped_step"]:
        line += f", {len(log['skipped_step'])} skipped steps"
    lines = [line]
    if log["val_loss"]:
        # a NaN is neither lower nor higher than anything: as the first value min() would keep it as the best
        finite = [i for i, v in enumerate(log["val_loss"]) if math.isfinite(v)]
        val_line = f"  val loss {log['val_loss'][-1]:.4f} at step {log['val_step'][-1]}"
        if finite:
            best = min(finite, key=lambda i: log["val_loss"][i])  # first of equal values
            val_line += f", best {log['val_loss'][best]:.4f} at step {log['val_step'][best]}"
        lines.append(val_line)
    if log["hellaswag_step"]:
        lines.append(f"  hellaswag acc_norm {log['hellaswag_acc_norm'][-1]:.4f} at step {log['hellaswag_step'][-1]}")
    return lines

# -----------------------------------------------------------------------------
# drawing


def plot(runs: list[tuple[str, dict]], out: str, x: str = "step", smooth: int = 10) -> None:
    """Draw the loss panel (and a HellaSwag panel if any run has HellaSwag) into `out`."""
    with_hs = any(log["hellaswag_step"] for _, log in runs)
    fig = Figure(figsize=(13, 4) if with_hs else (10, 4), layout="constrained")
    axes = fig.subplots(1, 2 if with_hs else 1, squeeze=False)[0]
    ax_loss = axes[0]
    xlabel = "tokens seen" if x == "tokens" else "step"
    colours = matplotlib.rcParams["axes.prop_cycle"].by_key()["color"]

    for i, (label, log) in enumerate(runs):
        c = colours[i % len(colours)]
        if log["train_step"]:
            xs, ys = x_values(log, "train", x), log["train_loss"]
            if smooth > 1:
                ax_loss.plot(xs, ys, color=c, alpha=0.25, lw=0.8)  # raw: every step's noise, in the background
                ax_loss.plot(xs, ema(ys, smooth), color=c, lw=1.6, label=f"{label} train (EMA {smooth})")
            else:
                ax_loss.plot(xs, ys, color=c, lw=1.2, label=f"{label} train")
        if log["val_step"]:
            marker = "o" if len(log["val_step"]) <= 60 else None  # markers show where val was measured, if sparse
            ax_loss.plot(x_values(log, "val", x), log["val_loss"], color=c, ls="--", marker=marker, ms=4, lw=1.4,
                         label=f"{label} val")
        if with_hs and log["hellaswag_step"]:
            xs = x_values(log, "hellaswag", x)
            marker = "o" if len(xs) <= 60 else None
            axes[1].plot(xs, log["hellaswag_acc_norm"], color=c, marker=marker, ms=4, lw=1.6, label=f"{label} acc_norm")
            axes[1].plot(xs, log["hellaswag_acc"], color=c, ls="--", lw=1.0, alpha=0.7, label=f"{label} acc")

    ax_loss.set_title("loss")
    ax_loss.set_ylabel("cross-entropy (nats per token)")
    if with_hs:
        axes[1].axhline(0.25, color="grey", ls=":", lw=1, label="chance (0.25)")
        axes[1].set_title("HellaSwag (completion style)")
        axes[1].set_ylabel("accuracy")
    for ax in axes:
        ax.set_xlabel(xlabel)
        if x == "tokens":
            ax.xaxis.set_major_formatter(EngFormatter(sep=""))  # 200k, 1.5M, 10G rather than 1e6 offsets
        ax.grid(alpha=0.3)
        ax.legend(fontsize="small")
    try:  # beside it first, then renamed over it: a run killed mid-write leaves the last whole plot, not half a PNG
        with atomic_write(out) as tmp:
            fig.savefig(tmp, dpi=100, format=os.path.splitext(out)[1][1:].lower())  # the format of out, not of .tmp
    except (OSError, ValueError) as e:  # a missing folder, a full disk, an extension matplotlib can't write
        raise SystemExit(f"error: cannot write {out}: {getattr(e, 'strerror', None) or e}") from None

# -----------------------------------------------------------------------------


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("runs", nargs="+", help="run dirs (a train_gpt.py --out-dir holding log.jsonl), or log files")
    p.add_argument("--out", default=None, help="the image to write; its extension picks the format, none: .png; "
                                               "a folder: plot.png in it (default: plot.png in the first run's dir)")
    p.add_argument("--labels", nargs="+", default=None, help="one legend label per run (default: the dir names)")
    p.add_argument("--x", choices=("step", "tokens"), default="step",
                   help="x axis: optimizer steps, or tokens seen = step * total_batch_size (default: %(default)s)")
    p.add_argument("--smooth", type=int, default=10,
                   help="EMA span in logged points for the train loss; 0 or 1: raw only (default: %(default)s)")
    args = p.parse_args(argv)
    if args.labels is not None and len(args.labels) != len(args.runs):
        p.error(f"--labels gives {len(args.labels)} labels for {len(args.runs)} runs")
    if not 0 <= args.smooth <= 10**6:  # past ~1e16 the EMA's weight rounds to 1 - 1 = 0: a line of NaN, not drawn
        p.error(f"--smooth must be between 0 and 1,000,000, got {args.smooth}")
    return args


def main(argv=None) -> str:
    args = parse_args(argv)
    paths = [find_log(run) for run in args.runs]
    logs = [read_log(path) for path in paths]
    # a run's name is its dir as given, without the trailing slash: "log/" -> "log"
    labels = args.labels or [run.rstrip("/\\") or run for run in args.runs]
    if args.x == "tokens":
        for path, log in zip(paths, logs):
            if log["total_batch_size"] is None:
                raise SystemExit(f"error: {path} has no start or resume event with a total_batch_size: "
                                 "use --x step")
    runs = list(zip(labels, logs))
    for label, log in runs:
        print("\n".join(summary(label, log)))
    out = args.out or os.path.join(os.path.dirname(paths[0]), "plot.png")
    if os.path.isdir(out) or out.endswith(("/", os.sep)):
        out = os.path.join(out, "plot.png")  # a folder: the default name in it, not a hidden "folder/.png.png"
    if not os.path.splitext(out)[1]:
        out += ".png"  # what matplotlib would write: name that file, not the one asked for
    plot(runs, out, x=args.x, smooth=args.smooth)
    print(f"wrote {out}")
    return out


if __name__ == "__main__":
    main()
