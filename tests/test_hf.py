"""python -m pytest tests/test_hf.py -v

Hugging Face in and out, on tiny random models, CPU, float32, no network: GPT.from_pretrained reads a
transformers GPT-2 folder; export_hf.py writes one that transformers reads with no code of ours.
"""

import json
import os
import re
import subprocess
import sys

import pytest
import torch
import transformers  # requirements-dev.txt: the reference implementation

import export_hf
import hellaswag
import train_gpt
from conftest import ITEM, REPO, random_model, write_model_checkpoint
from model import GPT, GPTConfig
from tokenizer import EOT, N_VOCAB, get_encoding

TOL = dict(rtol=1e-5, atol=1e-5)  # fp32: two implementations of the same math, summed in different orders


def save_random_hf(path, **overrides) -> transformers.GPT2LMHeadModel:
    """A tiny random GPT2LMHeadModel saved in path, every weight moved off its init (biases 0, LayerNorms 1)."""
    config = dict(vocab_size=512, n_positions=64, n_embd=32, n_layer=2, n_head=4, resid_pdrop=0.0,
                  embd_pdrop=0.0, attn_pdrop=0.0, bos_token_id=0, eos_token_id=0)
    hf = transformers.GPT2LMHeadModel(transformers.GPT2Config(**{**config, **overrides})).eval()
    with torch.no_grad():
        for p in hf.parameters():
            p.add_(0.02 * torch.randn_like(p))
    hf.save_pretrained(path)
    return hf


@pytest.fixture(scope="module")
def run(tmp_path_factory) -> tuple[str, GPT]:
    """An out dir holding one checkpoint of a random tiny model (vocab padded to 50,304), as train_gpt.py writes it."""
    cfg = train_gpt.preset_config("tiny")
    model = random_model(train_gpt.model_config(cfg), scale=0.02)
    return str(write_model_checkpoint(tmp_path_factory.mktemp("run"), model, cfg, 7)), model


@pytest.fixture(scope="module")
def exported(run, tmp_path_factory) -> str:
    """run's checkpoint through export_hf.py."""
    out = str(tmp_path_factory.mktemp("export") / "hf_model")
    export_hf.main(["--checkpoint", run[0], "--out", out])
    return out

# -----------------------------------------------------------------------------
# in: GPT.from_pretrained


@pytest.mark.parametrize("activation", ["gelu_new", "gelu_pytorch_tanh"])
def test_from_pretrained_matches_transformers(tmp_path, activation):
    """A random HF GPT-2 with GPT-2's vocabulary, read by from_pretrained: same config, same logits."""
    hf = save_random_hf(tmp_path, vocab_size=N_VOCAB, activation_function=activation, bos_token_id=EOT,
                        eos_token_id=EOT)
    ours = GPT.from_pretrained(str(tmp_path)).eval()
    assert ours.config == GPTConfig(block_size=64, vocab_size=N_VOCAB, n_layer=2, n_head=4, n_embd=32)  # not padded
    assert ours.lm_head.weight is ours.transformer.wte.weight
    idx = torch.randint(0, N_VOCAB, (3, 40))
    idx[:, 0] = EOT
    with torch.no_grad():
        torch.testing.assert_close(ours(idx)[0], hf(idx).logits, **TOL)


@pytest.mark.parametrize("field,value", [
    ("activation_function", "relu"),
    ("tie_word_embeddings", False),
    ("scale_attn_by_inverse_layer_idx", True),
    ("n_inner", 64),
    ("layer_norm_epsilon", 1e-6),
])
def test_from_pretrained_refuses_what_it_cant_compute(tmp_path, field, value):
    """A config our blocks don't compute is a ValueError naming the field, not a model that is silently wrong."""
    save_random_hf(tmp_path, **{field: value})
    with pytest.raises(ValueError, match=f"has {field}="):
        GPT.from_pretrained(str(tmp_path))


@pytest.mark.parametrize("case,message", [
    ("more layers", "the weights of .* lack 12 tensors its config.json calls for \\(e.g. transformer.h.2."),
    ("fewer layers", "the weights of .* hold 11 tensors its config.json doesn't call for \\(e.g. transformer.h.1."),
    ("wider", "the weights of .* have other shapes than its config.json says"),
    ("cut short", "the weights file of .* is damaged: "),
])
def test_from_pretrained_refuses_weights_that_dont_fit(tmp_path, case, message):
    """A folder whose config.json and weights disagree, or whose weights file was cut short, is a ValueError:
    transformers would fill a missing block with random numbers and only print a note (or raise its own
    RuntimeError, or safetensors' error)."""
    save_random_hf(tmp_path)
    config = json.loads((tmp_path / "config.json").read_text())
    if case == "cut short":
        weights = tmp_path / "model.safetensors"
        weights.write_bytes(weights.read_bytes()[:1000])
    else:
        config.update(n_layer=3) if case == "more layers" else config.update(n_layer=1) if case == "fewer layers" \
            else config.update(n_embd=64)
        (tmp_path / "config.json").write_text(json.dumps(config))
    with pytest.raises(ValueError, match=message):
        GPT.from_pretrained(str(tmp_path))


def test_from_pretrained_without_transformers(monkeypatch):
    """Without transformers, from_pretrained says how to install it."""
    monkeypatch.setitem(sys.modules, "transformers", None)  # `import transformers` now raises ImportError
    with pytest.raises(ImportError, match="pip install transformers"):
        GPT.from_pretrained("gpt2")

# -----------------------------------------------------------------------------
# out: export_hf.py


def test_export_loads_in_transformers(run, exported):
    """transformers' Auto classes load the export on their own; its logits are ours minus the padding columns."""
    assert sorted(os.listdir(exported)) == ["config.json", "export_info.json", "generation_config.json",
                                            "merges.txt", "model.safetensors", "tokenizer.json",
                                            "tokenizer_config.json", "vocab.json"]
    assert os.listdir(os.path.dirname(exported)) == ["hf_model"]  # the temporary folder renamed, none left
    hf = transformers.AutoModelForCausalLM.from_pretrained(exported).eval()
    assert isinstance(hf, transformers.GPT2LMHeadModel) and hf.config.vocab_size == N_VOCAB
    assert json.load(open(os.path.join(exported, "export_info.json")))["step"] == 7
    idx = torch.randint(0, N_VOCAB, (2, 64))
    with torch.no_grad():
        torch.testing.assert_close(hf(idx).logits, run[1](idx)[0][..., :N_VOCAB], **TOL)


def test_export_round_trip(run, exported):
    """export, then GPT.from_pretrained: the original model's logits on the real tokens."""
    back = GPT.from_pretrained(exported).eval()
    assert back.config.vocab_size == N_VOCAB and back.config.block_size == run[1].config.block_size
    idx = torch.randint(0, N_VOCAB, (2, 64))
    with torch.no_grad():
        torch.testing.assert_close(back(idx)[0], run[1](idx)[0][..., :N_VOCAB], **TOL)


def test_exported_tokenizer_is_gpt2s(exported, corpus_slice):
    """AutoTokenizer on the export gives tiktoken's ids on real text, and <|endoftext|> is 50256."""
    tok = transformers.AutoTokenizer.from_pretrained(exported)
    enc = get_encoding()
    assert tok.eos_token == "<|endoftext|>" and tok.eos_token_id == EOT == 50256 and len(tok) == N_VOCAB
    assert tok("<|endoftext|>")["input_ids"] == [EOT]
    docs = [json.loads(line)["text"] for line in corpus_slice.read_text().splitlines()]
    assert [tok(doc)["input_ids"] for doc in docs] == [enc.encode_ordinary(doc) for doc in docs]


def test_export_replaces_an_earlier_export_but_nothing_else(run, tmp_path):
    """An earlier export is overwritten; a folder holding anything else needs --force, and is left as it was."""
    out = tmp_path / "out"
    out.mkdir()
    (out / "notes.txt").write_text("mine")
    with pytest.raises(SystemExit, match="^error: --out .* is not empty and not an earlier export: .*--force"):
        export_hf.main(["--checkpoint", run[0], "--out", str(out)])
    assert os.listdir(out) == ["notes.txt"]
    export_hf.main(["--checkpoint", run[0], "--out", str(out), "--force"])
    assert "notes.txt" not in os.listdir(out) and "model.safetensors" in os.listdir(out)
    export_hf.main(["--checkpoint", run[0], "--out", str(out)])  # an earlier export: no --force needed
    assert sorted(os.listdir(tmp_path)) == ["out"]  # no temporary or replaced folder left behind


def test_failed_export_keeps_the_earlier_one(run, tmp_path, monkeypatch):
    """A write that fails half-way (a full disk) leaves the earlier export whole and no temporary folder."""
    out = tmp_path / "out"
    export_hf.main(["--checkpoint", run[0], "--out", str(out)])
    before = {f.name: f.read_bytes() for f in out.iterdir()}

    def full_disk(model, path, info):
        open(os.path.join(path, "model.safetensors"), "wb").close()  # half written
        raise OSError(28, "No space left on device")
    monkeypatch.setattr(export_hf, "write_folder", full_disk)
    with pytest.raises(SystemExit, match="^error: cannot write .*: No space left on device$"):
        export_hf.main(["--checkpoint", run[0], "--out", str(out)])
    assert {f.name: f.read_bytes() for f in out.iterdir()} == before and os.listdir(tmp_path) == ["out"]


@pytest.mark.parametrize("case", ["no checkpoint", "missing checkpoint", "out is a file", "out not writable"])
def test_export_errors_are_one_line(run, tmp_path, case):
    """A missing checkpoint or an --out that can't be written stops export_hf.py with one line."""
    (tmp_path / "empty").mkdir()
    (tmp_path / "file").write_text("")
    checkpoint, out = run[0], str(tmp_path / "out")
    if case == "no checkpoint":
        checkpoint, what = str(tmp_path / "empty"), re.escape("error: no checkpoint (ckpt_*.pt) in ")
    elif case == "missing checkpoint":
        checkpoint, what = str(tmp_path / "ckpt_000001.pt"), "error: checkpoint .* not found"
    elif case == "out is a file":
        out, what = str(tmp_path / "file"), "error: --out .* is a file"
    else:  # a folder inside a file can't be created, even by root
        out, what = str(tmp_path / "file" / "out"), "error: cannot write "
    with pytest.raises(SystemExit, match=f"^{what}") as e:
        export_hf.main(["--checkpoint", checkpoint, "--out", out])
    assert "\n" not in str(e.value)


def test_export_never_replaces_a_training_run(run, tmp_path):
    """--out the run folder itself, with the --force the refusal suggests: refused, its checkpoints and log kept
    (the export used to take the folder's place)."""
    out = tmp_path / "run"
    out.mkdir()
    write_model_checkpoint(out, run[1], train_gpt.preset_config("tiny"), 3)
    (out / "log.jsonl").write_text("{}\n")
    with pytest.raises(SystemExit, match="^error: --out .* holds the checkpoints of a training run"):
        export_hf.main(["--checkpoint", str(out), "--out", str(out), "--force"])
    assert sorted(os.listdir(out)) == ["ckpt_000003.pt", "log.jsonl"] and os.listdir(tmp_path) == ["run"]


def test_export_to_a_file_with_a_slash_leaves_it_alone(run, tmp_path):
    """--out notes/, where notes is a file: refused as a file. It used to be moved aside to notes.tmp.XXXX.old,
    the export put in its place, and the run to end with 'error: cannot write ...: Not a directory'."""
    (tmp_path / "notes").write_text("mine")
    with pytest.raises(SystemExit, match="^error: --out .* is a file, not a folder$"):
        export_hf.main(["--checkpoint", run[0], "--out", str(tmp_path / "notes") + "/"])
    assert os.listdir(tmp_path) == ["notes"] and (tmp_path / "notes").read_text() == "mine"


@pytest.mark.slow
def test_export_cli_error_has_no_traceback(tmp_path):
    """python export_hf.py with no checkpoint: exit status 1 and one line on stderr."""
    r = subprocess.run([sys.executable, str(REPO / "export_hf.py"), "--checkpoint", str(tmp_path),
                        "--out", str(tmp_path / "out")], capture_output=True, text=True, timeout=120)
    assert r.returncode == 1
    assert r.stderr.strip().splitlines() == [f"error: no checkpoint (ckpt_*.pt) in {tmp_path}"]

# -----------------------------------------------------------------------------
# hellaswag.py --model with a Hugging Face folder


def test_hellaswag_reads_a_hf_folder(exported, tmp_path, capsys):
    """hellaswag.py --model DIR evaluates an exported folder, as our GPT (the packed fast path)."""
    assert isinstance(hellaswag.load_pretrained(exported), GPT)
    data = tmp_path / "hs.jsonl"
    data.write_text(json.dumps(ITEM) + "\n")
    res = hellaswag.main(["--model", exported, "--data", str(data), "--device", "cpu"])
    assert res["n"] == 1 and capsys.readouterr().out.strip().splitlines()[-1].startswith("n=1 acc=")


@pytest.mark.parametrize("case", ["unknown name", "small vocabulary", "unsupported config", "weights missing",
                                  "no model"])
def test_hellaswag_model_errors_are_one_line(tmp_path, case):
    """--model: an unknown name, or a folder we can't evaluate, stops hellaswag.py with one line."""
    data = tmp_path / "hs.jsonl"
    data.write_text(json.dumps(ITEM) + "\n")
    model = str(tmp_path / "hf")
    if case == "unknown name":
        model, what = "gpt3", "error: --model must be one of gpt2, gpt2-medium, gpt2-large, gpt2-xl or a"
    elif case == "small vocabulary":
        save_random_hf(model)
        what = "error: .* has a vocabulary of 512 tokens, fewer than GPT-2's 50,257"
    elif case == "unsupported config":
        save_random_hf(model, vocab_size=N_VOCAB, activation_function="relu")
        what = "error: the config of .* has activation_function='relu'"
    elif case == "weights missing":
        save_random_hf(model, vocab_size=N_VOCAB)
        config = json.loads(open(os.path.join(model, "config.json")).read())
        with open(os.path.join(model, "config.json"), "w") as f:
            json.dump({**config, "n_layer": 3}, f)
        what = "error: the weights of .* lack 12 tensors"
    else:
        os.makedirs(model)
        what = "error: cannot load a model from "
    with pytest.raises(SystemExit, match=f"^{what}") as e:
        hellaswag.main(["--model", model, "--data", str(data), "--device", "cpu"])
    assert "\n" not in str(e.value)


@pytest.mark.parametrize("where", ["a run in a folder below", "shards in a folder below"])
def test_export_force_never_deletes_a_run_or_shards_below_out(run, tmp_path, where):
    """--force replaces a folder of other files, but not one with a training run's checkpoints and log, or
    token shards, in a folder below it: refused, naming the file, and nothing changes (--force used to delete
    them with the folder)."""
    out = tmp_path / "project"
    below = out / ("myrun" if where.startswith("a run") else "mydata")
    below.mkdir(parents=True)
    if where.startswith("a run"):
        write_model_checkpoint(below, run[1], train_gpt.preset_config("tiny"), 3)
        (below / "log.jsonl").write_text("{}\n")
    else:
        (below / "train_000001.bin").write_bytes(b"\0" * 64)
    (out / "notes.txt").write_text("mine")
    before = sorted(str(p.relative_to(out)) for p in out.rglob("*"))
    with pytest.raises(SystemExit, match=f"^error: --out {re.escape(str(out))} holds a training run's files or "
                                         f"token shards \\({re.escape(str(below))}/"):
        export_hf.main(["--checkpoint", run[0], "--out", str(out), "--force"])
    assert sorted(str(p.relative_to(out)) for p in out.rglob("*")) == before and os.listdir(tmp_path) == ["project"]


@pytest.mark.parametrize("extra", ["a file", "a folder"])
def test_export_over_an_earlier_export_with_more_in_it_needs_force(run, tmp_path, extra):
    """An earlier export to which something was added (notes, a folder) is not replaced without --force: the
    export would delete what was added. It used to be, since export_info.json alone marked it an export."""
    out = tmp_path / "hf"
    export_hf.main(["--checkpoint", run[0], "--out", str(out)])
    if extra == "a file":
        (out / "notes.txt").write_text("mine")
    else:
        (out / "extra").mkdir()
        (out / "extra" / "copy.safetensors").write_bytes(b"x")
    before = sorted(str(p.relative_to(out)) for p in out.rglob("*"))
    name = "notes.txt" if extra == "a file" else "extra"
    with pytest.raises(SystemExit, match=f"^error: --out .* is an earlier export with more in it \\({name}\\): "
                                         "choose another folder, or pass --force to replace it$"):
        export_hf.main(["--checkpoint", run[0], "--out", str(out)])
    assert sorted(str(p.relative_to(out)) for p in out.rglob("*")) == before
    export_hf.main(["--checkpoint", run[0], "--out", str(out), "--force"])  # asked for: replaced
    assert name not in os.listdir(out) and "model.safetensors" in os.listdir(out)


@pytest.mark.parametrize("out", ["", ".", ".."])
def test_export_to_no_folder_or_the_current_one_is_refused_up_front(run, tmp_path, monkeypatch, out):
    """--out "" or the current folder (or one holding it): one line before the checkpoint is read, not the
    OS's error after the whole export."""
    work = tmp_path / "work"
    work.mkdir()
    monkeypatch.chdir(work)
    with pytest.raises(SystemExit, match="^error: --out (is empty|.* is the current folder or holds it)"):
        export_hf.main(["--checkpoint", str(tmp_path / "missing.pt"), "--out", out, "--force"])  # not read: --out first
    assert os.listdir(work) == [] and os.listdir(tmp_path) == ["work"]


def test_export_lists_its_files_and_replaces_exactly_those(run, tmp_path):
    """export_info.json lists the files the export wrote; a later export replaces a folder of those alone
    without --force, whatever files this version of transformers writes, and refuses one with another file."""
    out = tmp_path / "hf"
    export_hf.main(["--checkpoint", run[0], "--out", str(out)])
    info = json.loads((out / "export_info.json").read_text())
    assert info["files"] == sorted(os.listdir(out))
    info["files"].remove("vocab.json")  # as if an earlier version hadn't written it
    (out / "export_info.json").write_text(json.dumps(info))
    with pytest.raises(SystemExit, match=r"is an earlier export with more in it \(vocab.json\)"):
        export_hf.main(["--checkpoint", run[0], "--out", str(out)])
