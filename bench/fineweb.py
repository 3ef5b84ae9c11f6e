"""
Sharding speed: tokens/s of `fineweb.py --input ... --workers N` (reading, tokenizing, writing shards,
start-up included) against tiktoken's own encode_ordinary_batch on the same documents with N threads.

    python bench/fineweb.py --input corpus/*.jsonl               # 2 workers, the corpus 4 times over

The documents are written --repeat times into one temporary .jsonl first, so that the figure is the
steady rate of a large input rather than the fixed costs of opening a few small files.
"""

import argparse
import json
import os
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
    args = p.parse_args(argv)

    docs = []
    for path in args.input:
        with open(path, encoding="utf-8") as f:
            docs += [json.loads(line)["text"] for line in f if line.strip()]
    docs *= args.repeat
    tmp = tempfile.TemporaryDirectory()
    big = os.path.join(tmp.name, "input.jsonl")
    with open(big, "w", encoding="utf-8") as f:
        for d in docs:
            f.write(json.dumps({"text": d}) + "\n")
    enc = get_encoding()
    t0 = time.perf_counter()
    tokens = enc.encode_ordinary_batch(docs, num_threads=args.workers)
    t_tiktoken = time.perf_counter() - t0
    n_tiktoken = sum(len(t) + 1 for t in tokens)  # + the <|endoftext|> before each document

    t0 = time.perf_counter()
    n_read = sum(1 for _ in fineweb.iter_documents([big]))  # what fineweb.py's reading alone costs
    t_read = time.perf_counter() - t0
    assert n_read == len(docs)

    with tempfile.TemporaryDirectory() as out:
        t0 = time.perf_counter()
        subprocess.run([sys.executable, os.path.join(REPO, "fineweb.py"), "--input", big, "--out-dir", out,
                        "--workers", str(args.workers)], check=True, capture_output=True)
        t_fineweb = time.perf_counter() - t0
        n_fineweb = sum((os.path.getsize(os.path.join(out, f)) - 1024) // 2 for f in os.listdir(out) if f.endswith(".bin"))

    tmp.cleanup()
    print(f"{len(docs):,} documents ({os.path.getsize(args.input[0]) and len(args.input)} files x {args.repeat}), "
          f"{args.workers} workers/threads")
    print(f"{'':<40}{'tokens':>12}{'seconds':>9}{'tokens/s':>12}")
    print(f"{'tiktoken encode_ordinary_batch':<40}{n_tiktoken:>12,}{t_tiktoken:>9.2f}{n_tiktoken / t_tiktoken:>12,.0f}")
    print(f"{'fineweb.py (start-up and writes included)':<40}{n_fineweb:>12,}{t_fineweb:>9.2f}{n_fineweb / t_fineweb:>12,.0f}")
    print(f"{'of which reading through datasets':<40}{'':>12}{t_read:>9.2f}")
    ratio = (n_fineweb / t_fineweb) / (n_tiktoken / t_tiktoken)
    print(f"fineweb.py at {ratio:.0%} of tiktoken's throughput; same token count: {'yes' if n_fineweb == n_tiktoken else 'NO'}")
    return {"ratio": ratio, "same": n_fineweb == n_tiktoken}


if __name__ == "__main__":
    main()
