"""
Export a checkpoint of train_gpt.py as a Hugging Face GPT-2 model folder.

    python export_hf.py --checkpoint log/ --out hf_model                 # the latest checkpoint of a run
    python export_hf.py --checkpoint log/ckpt_012207.pt --out hf_model   # a given one

Only GPT-2's architecture exports (train_gpt.py --recipe gpt2, the default): transformers' GPT-2 has no
rotary positions, QK-norm, ReLU² or logit soft-capping, the model options of --recipe modern.

The folder holds config.json, model.safetensors and GPT-2's tokenizer (vocab.json, merges.txt,
tokenizer.json, tokenizer_config.json), so transformers loads it with no code of ours:

    from transformers import AutoModelForCausalLM, AutoTokenizer
    model = AutoModelForCausalLM.from_pretrained("hf_model")
    tok = AutoTokenizer.from_pretrained("hf_model")

and so does EleutherAI's lm-evaluation-harness:

    lm_eval --model hf --model_args pretrained=hf_model --tasks hellaswag --device cuda:0 --batch_size 16

The vocabulary is trimmed: our models pad GPT-2's 50,257 tokens to 50,304 rows (a multiple of 64, for
faster matmuls), and the export keeps the first 50,257. No text holds a padding id, and a head without
those rows can't sample them in transformers' generate. The logits of the real tokens are unchanged; their
probabilities are normalised over 50,257 tokens instead of 50,304, which changes nothing measurable once
training has pushed the never-seen padding ids down.

The folder is written beside --out first (OUT.tmp.XXXX) and renamed into place when complete. An existing
--out is replaced only if it is an earlier export (the files its export_info.json lists, nothing else) or
with --force, and never if it or a folder below it holds checkpoints, a log.jsonl or token shards.
"""

import argparse
import json
import os
import re
import shutil

import torch

from atomic_write import atomic_write, current_umask
from checkpoint import checkpoint_step, list_checkpoints, model_from_checkpoint, open_checkpoint
from errors import os_reason
from model import CONV1D_WEIGHTS, GPT
from tokenizer import EOT, N_VOCAB, bpe_files_dir

INFO_FILE = "export_info.json"  # what was exported, and the mark of a folder this script wrote
# the files an export holds, for exports whose INFO_FILE doesn't list them (transformers' versions differ in the
# tokenizer files they add): a folder of these alone, with INFO_FILE, is replaced without --force
EXPORT_FILES = {INFO_FILE, "config.json", "generation_config.json", "model.safetensors", "vocab.json", "merges.txt",
                "tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "added_tokens.json"}
MAX_FILES_CHECKED = 10_000  # a folder to replace with --force holding more than this: refused unread


def hf_state_dict(model: GPT, n_vocab: int = N_VOCAB) -> dict[str, torch.Tensor]:
    """Our weights under Hugging Face's GPT-2 layout: the same names, Conv1D weights transposed to (in, out),
    token embedding and head cut to n_vocab rows. The inverse of GPT.from_pretrained's copy."""
    sd = {}
    for k, v in model.state_dict().items():
        if k.endswith(CONV1D_WEIGHTS):
            v = v.t()  # nn.Linear keeps (out, in); HF's Conv1D (in, out)
        if k in ("transformer.wte.weight", "lm_head.weight"):
            v = v[:n_vocab]  # (vocab_size, C) -> (n_vocab, C): drop the padding rows
        sd[k] = v.detach().cpu().contiguous()
    return sd


def export_files(path: str) -> set[str] | None:
    """The files of the export this script wrote in path, as its export_info.json lists them (an export from
    before that list: the usual ones); None if path is not an export of this script."""
    try:
        with open(os.path.join(path, INFO_FILE)) as f:
            info = json.load(f)
        if info.get("exported_by") != "export_hf.py":
            return None
        return set(info.get("files", EXPORT_FILES))
    except (OSError, ValueError, AttributeError, TypeError):
        return None


def holds(folder: str, path: str) -> bool:
    """Whether path is folder or inside it."""
    try:
        return os.path.commonpath([folder, path]) == folder
    except ValueError:  # on two drives (Windows)
        return False


def training_file(out: str) -> str | None:
    """The first file of a training run or its data found in out or a folder below it (a checkpoint, a
    log.jsonl, a token shard), which not even --force deletes; None if there is none."""
    seen = 0
    for folder, dirs, files in os.walk(out):
        for name in files:
            if checkpoint_step(name) is not None or re.fullmatch(r"log\.jsonl|(train|val)_\d+\.bin", name):
                return os.path.join(folder, name)
        seen += len(files) + len(dirs)
        if seen > MAX_FILES_CHECKED:
            raise SystemExit(f"error: --out {out} holds more than {MAX_FILES_CHECKED:,} files and folders: "
                             "choose another folder")
    return None


def check_out(out: str, force: bool) -> None:
    """SystemExit, before any work is done, if --out can't or shouldn't be written."""
    out = out.rstrip("/\\") or out  # as export() writes it: "notes/" is the file notes, which it would replace
    if not out:
        raise SystemExit("error: --out is empty: name the folder to write")
    if holds(os.path.realpath(out), os.path.realpath(os.getcwd())):  # ".", "..": can't be replaced
        raise SystemExit(f"error: --out {out} is the current folder or holds it: choose another folder")
    if os.path.exists(out) and not os.path.isdir(out):
        raise SystemExit(f"error: --out {out} is a file, not a folder")
    if list_checkpoints(out):  # even with --force, which the error below suggests: it would delete the run
        raise SystemExit(f"error: --out {out} holds the checkpoints of a training run: choose another folder")
    if os.path.isdir(out) and os.listdir(out) and not force:
        written = export_files(out)
        if written is None:
            raise SystemExit(f"error: --out {out} is not empty and not an earlier export: "
                             "choose another folder, or pass --force to replace it")
        # a file of the user's put in an export, a folder: the export would delete them
        others = sorted(n for n in os.listdir(out) if n not in written or not os.path.isfile(os.path.join(out, n)))
        if others:
            raise SystemExit(f"error: --out {out} is an earlier export with more in it ({', '.join(others)}): "
                             "choose another folder, or pass --force to replace it")
    if os.path.isdir(out) and (found := training_file(out)):  # --force too: a run or shards in a folder below
        raise SystemExit(f"error: --out {out} holds a training run's files or token shards ({found}): "
                         "choose another folder")
    parent = os.path.dirname(os.path.abspath(out))
    if not os.path.isdir(parent):
        raise SystemExit(f"error: cannot write {out}: {parent} is not a folder")
    if not os.access(parent, os.W_OK):
        raise SystemExit(f"error: cannot write {out}: {parent} is not writable")


def write_folder(model: GPT, path: str, info: dict) -> None:
    """Hugging Face GPT-2 model + tokenizer in path (a new, empty folder)."""
    import transformers  # here only: the export needs it, training doesn't
    c = model.config
    config = transformers.GPT2Config(
        vocab_size=N_VOCAB, n_positions=c.block_size, n_embd=c.n_embd, n_layer=c.n_layer, n_head=c.n_head,
        activation_function="gelu_new",  # the tanh approximation, as our MLP computes it
        resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0,  # we train without dropout
        bos_token_id=EOT, eos_token_id=EOT, tie_word_embeddings=True)
    hf = transformers.GPT2LMHeadModel(config)
    hf.load_state_dict(hf_state_dict(model))  # strict: every weight, no more
    hf.save_pretrained(path)  # config.json, generation_config.json, model.safetensors (tied head stored once)

    # GPT-2's tokenizer: OpenAI's encoder.json and vocab.bpe are HF's vocab.json and merges.txt
    files = bpe_files_dir()
    shutil.copyfile(os.path.join(files, "encoder.json"), os.path.join(path, "vocab.json"))
    shutil.copyfile(os.path.join(files, "vocab.bpe"), os.path.join(path, "merges.txt"))
    with open(os.path.join(path, "vocab.json"), encoding="utf-8") as f:
        vocab = json.load(f)
    with open(os.path.join(path, "merges.txt"), encoding="utf-8") as f:
        merges = [tuple(line.split()) for line in f.read().splitlines()[1:] if line]  # line 1: "#version: 0.2"
    tok = transformers.GPT2Tokenizer(vocab=vocab, merges=merges, model_max_length=c.block_size)
    tok.save_pretrained(path)  # tokenizer.json (the fast tokenizer whole) and tokenizer_config.json
    with open(os.path.join(path, INFO_FILE), "w") as f:
        json.dump({**info, "files": sorted(set(os.listdir(path)) | {INFO_FILE})}, f, indent=2)  # what a new export replaces
    for name in os.listdir(path):  # model.safetensors comes out 0600 (a temporary file, renamed): as the others
        os.chmod(os.path.join(path, name), 0o666 & ~current_umask())


def export(model: GPT, out: str, info: dict) -> None:
    """Write the folder beside out, then swap it in for out: nobody sees half an export (see atomic_write)."""
    out = out.rstrip("/\\")
    try:
        with atomic_write(out, folder=True) as tmp:
            write_folder(model, tmp, info)
    except (OSError, RuntimeError) as e:  # safetensors and torch wrap the OS error in a RuntimeError
        raise SystemExit(f"error: cannot write {out}: {os_reason(e)}") from None


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--checkpoint", required=True, help="a checkpoint file, or an out dir: its latest checkpoint")
    p.add_argument("--out", required=True, help="the folder to write (created; an earlier export is replaced)")
    p.add_argument("--force", action="store_true",
                   help="replace --out even if it holds something else (never checkpoints, a log or shards)")
    return p.parse_args(argv)


def main(argv=None) -> str:
    args = parse_args(argv)
    try:
        import transformers  # noqa: F401  (checked up front: before a large checkpoint is read)
    except ImportError:
        raise SystemExit("error: export_hf.py needs the transformers package: pip install transformers") from None
    check_out(args.out, args.force)
    name, ckpt = open_checkpoint(args.checkpoint)  # SystemExit with one line for a missing or bad checkpoint
    model = model_from_checkpoint(ckpt, name)
    if not model.config.is_gpt2:
        raise SystemExit(f"error: {name} is not a GPT-2 model ({', '.join(model.config.departures())}: --recipe modern), and Hugging "
                         "Face's GPT-2 can't compute it; export works for --recipe gpt2 checkpoints")
    if model.config.vocab_size < N_VOCAB:
        raise SystemExit(f"error: {name} has a vocabulary of {model.config.vocab_size:,} rows, fewer than "
                         f"GPT-2's {N_VOCAB:,} tokens: its tokenizer can't be GPT-2's")
    info = {"exported_by": "export_hf.py", "checkpoint": os.path.basename(name), "step": ckpt["step"],
            "vocab_size_trained": model.config.vocab_size, "vocab_size_exported": N_VOCAB,
            "train_config": ckpt["config"]}
    export(model, args.out, info)
    n_params = model.num_params() - (model.config.vocab_size - N_VOCAB) * model.config.n_embd  # less the padding rows
    print(f"{name} (step {ckpt['step']}) -> {args.out}: {n_params:,} parameters, "
          f"vocabulary {N_VOCAB:,}, context {model.config.block_size}")
    return args.out


if __name__ == "__main__":
    main()
