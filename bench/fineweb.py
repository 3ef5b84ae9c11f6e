"""
Sharding speed: tokens/s of `fineweb.py --input ... --workers N` (reading, tokenizing, writing shards,
start-up included) against tiktoken's own encode_ordinary_batch on the same documents with N threads.

    python bench/fineweb.py --input corpus/*.jsonl               # 2 workers, the corpus 4 times over, 5 rounds

The documents are written --repeat times into one temporary .jsonl first, so that the figure is the
steady rate of a large input rather than the fixed costs of opening a few small files.
"""

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from tokenizer import get_encoding  # noqa: E402
import fineweb  # noqa: E402

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--input", nargs="+", required=True, help=".jsonl files (field text)")
    p.add_argument("--workers", type=int, default=2)
    p.add_argument("--repeat", type=int, default=4, help="the input this many times over (default: %(default)s)")
    p.add_argument("--rounds", type=int, default=5, help="measurements of each, alternated (default: %(default)s)")
    args = p.parse_args(argv)
    for flag in ("workers", "repeat", "rounds"):
        if getattr(args, flag) < 1:
            p.error(f"--{flag} must be at least 1, got {getattr(args, flag)}")

    docs = []
    for path in args.input:
        try:
            with open(path, encoding="utf-8") as f:
                docs += [json.loads(line)["text"] for line in f if line.strip()]
        except (OSError, UnicodeDecodeError, ValueError, KeyError, TypeError) as e:
            raise SystemExit(f"error: --input {path}: not a readable jsonl file with a text field "
                             f"({type(e).__name__}: {e})") from None
        if not all(isinstance(d, str) for d in docs):
            raise SystemExit(f"error: --input {path}: a text field that is not a string")
    if not docs:
        raise SystemExit("error: --input holds no documents")
    docs *= args.repeat
    tmp = tempfile.TemporaryDirectory()
    big = os.path.join(tmp.name, "input.jsonl")
    with open(big, "w", encoding="utf-8") as f:
        for d in docs:
            f.write(json.dumps({"text": d}) + "\n")
    enc = get_encoding()
    rates, ratios = {"tiktoken": [], "fineweb": []}, []
    for _ in range(args.rounds):  # alternated: each round's pair sees about the same machine
        t0 = time.perf_counter()
        tokens = enc.encode_ordinary_batch(docs, num_threads=args.workers)
        t_tiktoken = time.perf_counter() - t0
        n_tiktoken = sum(len(t) + 1 for t in tokens)  # + the <|endoftext|> before each document
        del tokens
        with tempfile.TemporaryDirectory() as out:
            t0 = time.perf_counter()
            proc = subprocess.run([sys.executable, os.path.join(REPO, "fineweb.py"), "--input", big, "--out-dir", out,
                                   "--workers", str(args.workers)], capture_output=True, text=True)
            if proc.returncode != 0:  # its own one-line error, or the last line of what went wrong
                raise SystemExit(f"error: fineweb.py failed: {(proc.stderr.strip().splitlines() or ['?'])[-1]}")
            t_fineweb = time.perf_counter() - t0
            n_fineweb = sum((os.path.getsize(os.path.join(out, f)) - 1024) // 2
                            for f in os.listdir(out) if f.endswith(".bin"))
        if n_fineweb != n_tiktoken:  # the shards must hold every token: a faster run that drops some is no result
            raise SystemExit(f"error: fineweb.py wrote {n_fineweb:,} tokens, tiktoken made {n_tiktoken:,}")
        rates["tiktoken"].append(n_tiktoken / t_tiktoken)
        rates["fineweb"].append(n_fineweb / t_fineweb)
        ratios.append(rates["fineweb"][-1] / rates["tiktoken"][-1])

    t0 = time.perf_counter()
    n_read = sum(len(fineweb.item_texts(item)) for item in fineweb.iter_work([big]))  # reading and parsing, in one process
    t_read = time.perf_counter() - t0
    if n_read != len(docs):
        raise SystemExit(f"error: fineweb.py's reader found {n_read:,} documents of {len(docs):,}")
    tmp.cleanup()

    print(f"{len(docs):,} documents ({len(args.input)} files x {args.repeat}), {n_tiktoken:,} tokens, "
          f"{args.workers} workers/threads, {args.rounds} rounds")
    print(f"{'':<44}{'best tokens/s':>14}{'worst':>12}")
    print(f"{'tiktoken encode_ordinary_batch':<44}{max(rates['tiktoken']):>14,.0f}{min(rates['tiktoken']):>12,.0f}")
    print(f"{'fineweb.py (start-up and writes included)':<44}{max(rates['fineweb']):>14,.0f}"
          f"{min(rates['fineweb']):>12,.0f}")
    print(f"reading and parsing alone, in one process: {t_read:.2f} s")
    ratio = statistics.median(ratios)  # each round's two runs saw the same machine, more or less
    print(f"fineweb.py at {ratio:.0%} of tiktoken's throughput (median of the rounds; round by round: "
          + ", ".join(f"{r:.0%}" for r in ratios) + "); the same token count: yes")
    return {"ratio": ratio, "rounds": ratios}


if __name__ == "__main__":
    main()
