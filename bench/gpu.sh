#!/usr/bin/env bash
# Every GPU check of this repository in one script, then one table: at most 8 minutes on one GPU (2-3.5 on an H200).
#
#   bash bench/gpu.sh --data shards/ --hellaswag hellaswag_val.jsonl   # on a GPU, no network needed
#   bash bench/gpu.sh --dry-run                                        # anywhere: the same steps at toy sizes
#
# --data: token shards written by fineweb.py (a few MB are enough: the runs here are short);
# --hellaswag: the HellaSwag validation jsonl. The dry run makes both from tests/data.
#
#   1. the gpt2 preset's training step with --compile and bfloat16: tokens/s, and MFU against the card's
#      bfloat16 matmul peak, which bench/train.py measures first; the plain baseline's best beside it
#   2. the seed preset at the reference run's 32,768 tokens per step, 300 steps, --compile, with val loss,
#      HellaSwag and samples in the loop (--compile leaves them working), and a checkpoint at the end
#   3. bfloat16 against float32: the training loss over the first 200 steps of tiny (bench/bf16_curve.py);
#      float32 as train_gpt.py runs it on CUDA, its matmuls in TF32
#   4. the full HellaSwag (10,042 examples) with step 2's checkpoint
#
# Everything goes to --out (default: gpu_check/ in the repository): the runs' logs and one JSON file per step.
set -euo pipefail
repo="$(cd "$(dirname "$0")/.." && pwd)"

dry=0 data="" hellaswag="" out="$repo/gpu_check"
while [ $# -gt 0 ]; do
    case "$1" in
        --dry-run) dry=1 ;;
        --data|--hellaswag|--out)
            [ $# -ge 2 ] && [ -n "$2" ] && [ "${2#--}" = "$2" ] || { echo "error: $1 needs a value" >&2; exit 2; }
            case "$1" in --data) data="$2" ;; --hellaswag) hellaswag="$2" ;; --out) out="$2" ;; esac
            shift ;;
        *) echo "error: unknown argument $1 (see the top of $0)" >&2; exit 2 ;;
    esac
    shift
done
[ "$dry" = 1 ] || { [ -n "$data" ] && [ -n "$hellaswag" ]; } || { echo "error: pass --data SHARDS --hellaswag FILE, or --dry-run" >&2; exit 2; }
# shards of both splits, found now: step 2, the first to read them, would meet their absence after step 1's minutes
has() { local f; for f in "$data/$1"_*.bin; do [ -f "$f" ] && return 0; done; return 1; }
[ -z "$data" ] || { has train && has val; } \
    || { echo "error: --data $data is not a directory of shards (train_*.bin and val_*.bin, as fineweb.py writes)" >&2; exit 2; }
[ -z "$hellaswag" ] || [ -f "$hellaswag" ] || { echo "error: --hellaswag $hellaswag not found" >&2; exit 2; }
# the paths given are the caller's: make them absolute before moving to the repository, where the scripts are
[ -z "$data" ] || data="$(cd "$data" && pwd)"
[ -z "$hellaswag" ] || hellaswag="$(cd "$(dirname "$hellaswag")" && pwd)/$(basename "$hellaswag")"
# the Python that has torch: $PYTHON if set, else python or python3 (an image may have torch under one name only)
python="${PYTHON:-}"
if [ -z "$python" ]; then
    for p in python python3; do "$p" -c "import torch" 2> /dev/null && { python=$p; break; }; done
fi
[ -n "$python" ] || { echo "error: no python on PATH imports torch; set PYTHON=/path/to/python" >&2; exit 2; }
# the packages of requirements.txt, checked before any GPU time is spent (without network: docs/speed.md)
(cd "$repo" && "$python" -c "import numpy, tiktoken, torch, tqdm, tokenizer; tokenizer.get_encoding()") \
    || { echo "error: $python lacks packages of requirements.txt (see the lines above and the top of $0)" >&2; exit 2; }
mkdir -p "$out"
out="$(cd "$out" && pwd)"
cd "$repo"

if [ "$dry" = 1 ]; then  # toy sizes, on whatever device there is
    device=auto
    [ -n "$data" ] || { data="$out/shards"; "$python" fineweb.py --input tests/data/corpus.jsonl --out-dir "$data" --shard-size 20000 > "$out/fineweb.txt"; }
    [ -n "$hellaswag" ] || hellaswag=tests/data/hellaswag.jsonl
    step=(--preset tiny --batch-size 2 --seq-len 64 --accum 1 --steps 2)
    seed=(--preset tiny --batch-size 2 --seq-len 64 --total-batch-size 256 --max-steps 6 --val-every 3 --val-steps 2
          --hellaswag-every 3 --hellaswag-limit 8 --sample-every 3 --sample-len 8 --num-samples 2 --checkpoint-every 6 --warmup-steps 2)
    curve_steps=10 full=(--limit 40)
else
    device=cuda
    step=(--preset gpt2 --batch-size 16 --seq-len 1024 --accum 2 --steps 10 --warmup 3)
    seed=(--preset seed --batch-size 64 --seq-len 512 --total-batch-size 32768 --max-steps 300 --val-every 100
          --val-steps 20 --hellaswag-every 100 --hellaswag-limit 1000 --sample-every 100 --checkpoint-every 300 --warmup-steps 10)
    curve_steps=200 full=()  # all of it
fi
t0=$SECONDS

echo "== 1/4 training step, --compile, bfloat16"
"$python" bench/train.py "${step[@]}" --device "$device" --dtype bfloat16 --configs plain-best,compiled --json "$out/step.json"

echo "== 2/4 seed preset, --compile, val loss, HellaSwag and samples in the loop"
rm -rf "$out/seed"
"$python" train_gpt.py "${seed[@]}" --data-dir "$data" --hellaswag-data "$hellaswag" --out-dir "$out/seed" \
    --device "$device" --dtype bfloat16 --compile

echo "== 3/4 bfloat16 against float32, tiny"
"$python" bench/bf16_curve.py --data-dir "$data" --steps "$curve_steps" --device "$device" --json "$out/bf16.json"

echo "== 4/4 HellaSwag with the seed checkpoint"
# ${a[@]+"${a[@]}"}: an empty array, which bash before 4.4 calls unbound under set -u
"$python" hellaswag.py --checkpoint "$out/seed" --data "$hellaswag" ${full[@]+"${full[@]}"} --device "$device" | tee "$out/hellaswag.txt"

"$python" - "$out" $((SECONDS - t0)) <<'EOF'
import json, os, sys
out, wall = sys.argv[1], int(sys.argv[2])
steps = {r["config"]: r for r in json.load(open(os.path.join(out, "step.json")))}
events = [json.loads(line) for line in open(os.path.join(out, "seed", "log.jsonl"))]
val = [e["val_loss"] for e in events if "val_loss" in e]
hs = " ".join(f"{e['hellaswag_acc_norm']:.3f}" for e in events if "hellaswag_acc_norm" in e)
samples = [e for e in events if "samples" in e]
tok_s = sorted(e["tok_per_s"] for e in events if "tok_per_s" in e)
curve = json.load(open(os.path.join(out, "bf16.json")))
full = dict(kv.split("=") for kv in open(os.path.join(out, "hellaswag.txt")).read().split("\n")[-2].split())
c, b = steps["compiled"], steps["plain-best"]
rows = [
    ("training step, --compile, bfloat16", f"{c['tok_s']:,.0f} tok/s, MFU {c['mfu']:.1%} of {c['peak_flops'] / 1e12:,.0f} "
     f"TFLOP/s; plain baseline's best {b['tok_s']:,.0f} tok/s ({c['tok_s'] / b['tok_s']:.2f}x); peak {c['peak_mb']:,.0f} MB"),
    ("seed run, --compile, evals in the loop", f"{len(tok_s)} steps, median {tok_s[len(tok_s) // 2]:,.0f} tok/s; val loss "
     f"{val[0]:.3f} -> {val[-1]:.3f}; HellaSwag acc_norm {hs}; "
     f"{len(samples)} sample events"),
    (f"bfloat16 vs float32 (TF32 on CUDA), tiny, {curve['steps']} steps", f"loss |diff| max {curve['max']:.4f}, mean {curve['mean']:.4f}; "
     f"last quarter float32 {curve['last_quarter']['float32']:.4f}, bfloat16 {curve['last_quarter']['bfloat16']:.4f}"),
    ("HellaSwag, seed checkpoint", f"{full['n']} examples in {full['seconds']} s, acc_norm {full['acc_norm']}"),
    ("all four", f"{wall} s"),
]
width = max(len(name) for name, _ in rows)
print(f"\n{'check':<{width}}  result")
for name, result in rows:
    print(f"{name:<{width}}  {result}")
EOF
