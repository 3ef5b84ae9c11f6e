"""
A soak of the reference run's whole schedule: all 12,207 steps (warmup 469, cosine from 6e-4 to 6e-5,
checkpoints every 5,000 steps and at the end, val loss, HellaSwag and samples every 250 steps) on the
`tiny` model, so that it takes minutes rather than the reference run's days. It checks what a long run
needs and short tests can't show:

  - resident memory at the end within 10% of step 1,000's (nothing creeps);
  - the median step time of the last 1,000 steps within 20% of steps 1,000-2,000's;
  - the ETA printed at step 1,000 within 15% of the time the run then really took;
  - exactly the checkpoints at 5,000, 10,000 and 12,207; every step logged once; plot_log.py draws it;
  - a second run, killed (SIGKILL) at step --kill-at and resumed, ends with the very same weights.

    python bench/soak.py --data-dir edu_fineweb10B --hellaswag-data hellaswag_val.jsonl --out-dir soak
    python bench/soak.py ... --steps 2000 --kill-at 1500      # a shorter schedule, the same checks

Float32, so that the resumed run can be compared bit for bit. Prints one table; exits 1 if a check fails.
"""

import argparse
import json
import os
import re
import shutil
import statistics
import subprocess
import sys
import time

import torch

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO)

import plot_log  # noqa: E402
from checkpoint import list_checkpoints, load_checkpoint  # noqa: E402


def rss_mb(pid: int) -> float:
    """The resident set of a process, from /proc (Linux)."""
    with open(f"/proc/{pid}/status") as f:
        kb = next(int(line.split()[1]) for line in f if line.startswith("VmRSS:"))
    return kb / 1024


def seconds(eta: str) -> int:
    """run_log.format_duration's text back to seconds: '1h02m', '2m05s', '42s'."""
    h, m, s = (re.search(rf"(\d+){unit}", eta) for unit in ("h", "m", "s"))
    return sum(int(x.group(1)) * k for x, k in ((h, 3600), (m, 60), (s, 1)) if x)


def run(cmd: list[str], log_path: str, kill_at: int | None = None) -> dict:
    """Run train_gpt.py, reading its output as it comes: the time and resident memory at each step's line,
    the ETA it prints. With kill_at, SIGKILL it once it prints that step."""
    steps, etas = {}, {}
    t0 = time.monotonic()
    with open(log_path, "a") as out, subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                                      text=True, bufsize=1) as proc:
        for line in proc.stdout:
            out.write(line)
            m = re.match(r"step\s+(\d+) \| loss", line)
            if m:
                step = int(m.group(1))
                steps[step] = (time.monotonic() - t0, rss_mb(proc.pid))
                eta = re.search(r"eta (\S+)", line)
                if eta:
                    etas[step] = seconds(eta.group(1))
                if kill_at is not None and step >= kill_at:
                    proc.kill()
                    break
        rc = proc.wait()
    if kill_at is None and rc != 0:
        raise SystemExit(f"error: train_gpt.py exited with {rc}; see {log_path}")
    return {"steps": steps, "etas": etas, "seconds": time.monotonic() - t0}


def checkpoint_steps(out_dir: str) -> list[int]:
    return sorted(int(re.search(r"ckpt_(\d+)", path).group(1)) for path in list_checkpoints(out_dir))


def final_weights(out_dir: str) -> dict:
    return load_checkpoint(list_checkpoints(out_dir)[0])["model"]  # the newest


def main(argv=None) -> bool:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data-dir", required=True, help="token shards written by fineweb.py")
    p.add_argument("--hellaswag-data", required=True, help="a HellaSwag jsonl file")
    p.add_argument("--out-dir", required=True, help="the two runs go to <out-dir>/whole and <out-dir>/killed")
    p.add_argument("--steps", type=int, default=12207, help="(default: the reference run's %(default)s)")
    p.add_argument("--kill-at", type=int, default=10100, help="the step at which the second run is killed")
    p.add_argument("--hellaswag-limit", type=int, default=20, help="examples per HellaSwag (default: %(default)s)")
    args = p.parse_args(argv)
    if args.steps < 8:  # the ETA is checked at step --steps // 4, and a run prints one from step 2 on
        p.error(f"--steps must be at least 8, got {args.steps}")
    if not 0 < args.kill_at < args.steps:
        p.error("--kill-at must be a step of the run")

    n, every = args.steps, 250
    early, late = (1000, 2000) if n >= 4000 else (n // 4, n // 2)  # the step-time and memory window
    ckpt_every = 5000 if n >= 10000 else max(1, n * 5000 // 12207)
    if args.kill_at < ckpt_every:  # killed before any checkpoint, the resumed run would start anew
        p.error(f"--kill-at {args.kill_at} comes before the first checkpoint (step {ckpt_every}): nothing to resume")
    warmup = max(1, round(n * 469 / 12207))
    cmd = [sys.executable, os.path.join(REPO, "train_gpt.py"), "--preset", "tiny", "--block-size", "128",
           "--seq-len", "64", "--data-dir", args.data_dir, "--max-steps", str(n), "--warmup-steps", str(warmup),
           "--max-lr", "6e-4", "--min-lr", "6e-5", "--checkpoint-every", str(ckpt_every), "--val-every", str(every),
           "--hellaswag-every", str(every), "--hellaswag-limit", str(args.hellaswag_limit), "--hellaswag-data",
           args.hellaswag_data, "--sample-every", str(every), "--dtype", "float32", "--device", "cpu"]
    whole, killed = os.path.join(args.out_dir, "whole"), os.path.join(args.out_dir, "killed")
    for d in (whole, killed):
        shutil.rmtree(d, ignore_errors=True)
        os.makedirs(d)

    print(f"soak: {n} steps -> {whole}", flush=True)
    a = run(cmd + ["--out-dir", whole], os.path.join(whole, "stdout.txt"))
    print(f"soak: the same, killed at step {args.kill_at}, then --resume -> {killed}", flush=True)
    run(cmd + ["--out-dir", killed], os.path.join(killed, "stdout.txt"), kill_at=args.kill_at)
    b = run(cmd + ["--out-dir", killed, "--resume"], os.path.join(killed, "stdout.txt"))

    with open(os.path.join(whole, "log.jsonl")) as f:
        events = [json.loads(line) for line in f]
    dt = {e["step"]: e["dt_ms"] for e in events if "dt_ms" in e}
    logged = [e["step"] for e in events if "train_loss" in e]
    rss_early, rss_end = a["steps"][early][1], a["steps"][n - 1][1]
    step_early = statistics.median(dt[s] for s in range(early, late))
    step_late = statistics.median(dt[s] for s in range(n - (late - early), n))
    eta, real = a["etas"][early], a["seconds"] - a["steps"][early][0]
    ckpts = checkpoint_steps(whole)
    want_ckpts = sorted({*range(ckpt_every, n + 1, ckpt_every), n})
    png = plot_log.main([whole, "--out", os.path.join(args.out_dir, "soak.png")])
    wa, wb = final_weights(whole), final_weights(killed)
    same = wa.keys() == wb.keys() and all(torch.equal(wa[k], wb[k]) for k in wa)

    checks = [
        (f"resident memory, step {early} -> the end", f"{rss_early:,.0f} -> {rss_end:,.0f} MB "
         f"({rss_end / rss_early - 1:+.1%})", abs(rss_end / rss_early - 1) <= 0.10),
        (f"median step time, steps {early}-{late} -> the last {late - early}",
         f"{step_early:.1f} -> {step_late:.1f} ms ({step_late / step_early - 1:+.1%})", abs(step_late / step_early - 1) <= 0.20),
        (f"ETA at step {early} / the time it took", f"{eta:,} / {real:,.0f} s ({eta / real - 1:+.1%})", abs(eta / real - 1) <= 0.15),
        ("checkpoints", ", ".join(map(str, ckpts)), ckpts == want_ckpts),
        ("steps logged, each once", f"{len(logged):,} of {n:,}", logged == list(range(n))),
        ("val / HellaSwag / sample events", f"{sum('val_loss' in e for e in events)} / "
         f"{sum('hellaswag_acc_norm' in e for e in events)} / {sum('samples' in e for e in events)}", True),
        ("plot_log.py", png, os.path.getsize(png) > 0),
        (f"killed at step {args.kill_at}, resumed: final weights", "bit-identical" if same else "DIFFERENT", same),
        ("wall time", f"{a['seconds']:,.0f} s whole run, {b['seconds']:,.0f} s the resumed part", True),
    ]
    width = max(len(name) for name, _, _ in checks)
    print(f"\n{'check':<{width}}  {'result':<44}ok")
    for name, result, ok in checks:
        print(f"{name:<{width}}  {result:<44}{'yes' if ok else 'NO'}")
    return all(ok for _, _, ok in checks)


if __name__ == "__main__":
    sys.exit(0 if main() else 1)
