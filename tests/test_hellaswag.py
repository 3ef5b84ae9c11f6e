"""python -m pytest tests/test_hellaswag.py -v

hellaswag.py: loading and checking the data, the cached download (against a local HTTP server), packing,
scoring against known losses and against plain scoring with the model's full logits (bench/baseline.py),
ranks and processes, and the command line.
"""

import functools
import http.server
import json
import os
import socket
import subprocess
import sys
import threading
import time
from dataclasses import asdict

import pytest
import torch

import hellaswag
from bench.baseline import plain_hellaswag
from conftest import HELLASWAG, ITEM, MODERN, REPO, random_model, small_gpt, write_model_checkpoint
from hellaswag import HellaSwagError, count_correct, evaluate, load_examples, score_examples, val_file
from model import GPT, GPTConfig
from tokenizer import get_encoding

@pytest.fixture(scope="module")
def enc():
    """GPT-2's tokenizer."""
    return get_encoding()


def write_jsonl(path, items) -> str:
    """items as a .jsonl file at path; its name."""
    path.write_text("".join(json.dumps(item) + "\n" for item in items))
    return str(path)


# -----------------------------------------------------------------------------
# data


def test_load_examples_keeps_three_fields_and_limit(tmp_path):
    """load_examples returns ctx, endings and label in file order; limit keeps the first N; blank lines skip."""
    items = [dict(ITEM, label=i) for i in range(4)]
    path = write_jsonl(tmp_path / "hs.jsonl", items)
    with open(path, "a") as f:
        f.write("\n")
    examples = load_examples(path)
    assert examples == [{"ctx": ITEM["ctx"], "endings": ITEM["endings"], "label": i} for i in range(4)]
    assert [ex["label"] for ex in load_examples(path, limit=2)] == [0, 1]


def test_reads_the_committed_validation_slice(hellaswag_data):
    """tests/data/hellaswag.jsonl loads whole: 400 examples, labels as counted in tests/data/README.md."""
    examples = load_examples(str(hellaswag_data))
    assert len(examples) == 400
    assert [sum(ex["label"] == k for ex in examples) for k in range(4)] == [107, 97, 98, 98]
    assert examples[0] == {"ctx": ITEM["ctx"], "endings": ITEM["endings"], "label": ITEM["label"]}


GOOD = json.dumps(ITEM)


@pytest.mark.parametrize("content,where,what", [
    (GOOD + "\n{not json\n", ":2:", "not valid JSON"),
    (GOOD + "\n" + json.dumps({"ctx": "a", "endings": ["b"] * 4}) + "\n", ":2:", "missing field 'label'"),
    (json.dumps(dict(ITEM, label=4)), ":1:", "'label' must be an integer 0..3"),
    (json.dumps(dict(ITEM, label="3")), ":1:", "'label' must be an integer 0..3"),
    (json.dumps(dict(ITEM, endings=ITEM["endings"][:3])), ":1:", "four strings"),
    (json.dumps(dict(ITEM, ctx="")), ":1:", "'ctx' must be a non-empty string"),
    (json.dumps(dict(ITEM, endings=[*ITEM["endings"][:2], "", ITEM["endings"][3]])), ":1:", "ending 3 is empty"),
    ("[" * 100_000 + "\n", ":1:", "not valid JSON (nested too deeply)"),
    ("[1, 2]\n", ":1:", "expected a JSON object"),
    (GOOD + "\n" + GOOD + "\n\xff\n", ":3:", "not UTF-8"),
    ("", "", "no examples (empty file)"),
])
def test_malformed_file_names_file_and_line(tmp_path, content, where, what):
    """A malformed file raises HellaSwagError naming the file, the line and the problem, on one line."""
    path = tmp_path / "bad.jsonl"
    path.write_bytes(content.encode("latin-1"))
    with pytest.raises(HellaSwagError) as e:
        load_examples(str(path))
    assert f"{path}{where}" in str(e.value) and what in str(e.value) and "\n" not in str(e.value)


def test_missing_file(tmp_path):
    """A file that isn't there: HellaSwagError naming it."""
    with pytest.raises(HellaSwagError, match="nope.jsonl: file not found"):
        load_examples(str(tmp_path / "nope.jsonl"))

# -----------------------------------------------------------------------------
# download, against a local HTTP server


@pytest.fixture
def server(tmp_path):
    """An HTTP server on 127.0.0.1 serving tmp_path/www; yields (base url, list of requested paths)."""
    root = tmp_path / "www"
    root.mkdir()
    requested = []

    class Handler(http.server.SimpleHTTPRequestHandler):
        def log_message(self, *args):
            requested.append(self.path)

    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), functools.partial(Handler, directory=str(root)))
    # shutdown waits for serve_forever's next poll: every 0.05 s, not the default 0.5 s
    thread = threading.Thread(target=httpd.serve_forever, args=(0.05,), daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{httpd.server_address[1]}", root, requested
    httpd.shutdown()
    httpd.server_close()


def refused_url() -> str:
    """A URL of 127.0.0.1 where nothing listens."""
    with socket.socket() as s:  # a port that was free a moment ago: nothing listens there
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    return f"http://127.0.0.1:{port}/hellaswag_val.jsonl"


def test_download_is_checked_cached_and_reused(tmp_path, server):
    """The file is downloaded into the cache dir once; the next call uses the copy, even offline."""
    url, root, requested = server
    body = (GOOD + "\n") * 3
    (root / "val.jsonl").write_text(body)
    cache = tmp_path / "cache"
    path = val_file(str(cache), url=f"{url}/val.jsonl", n_bytes=len(body), n_lines=3)
    assert open(path).read() == body and os.listdir(cache) == ["hellaswag_val.jsonl"]
    assert val_file(str(cache), url=refused_url(), n_bytes=len(body), n_lines=3) == path
    assert requested == ["/val.jsonl"]
    assert len(load_examples(path)) == 3


@pytest.mark.parametrize("n_bytes,n_lines,what", [(10, 3, "bytes, expected 10"), (None, 4, "3 lines, expected 4")])
def test_wrong_download_leaves_nothing(tmp_path, server, n_bytes, n_lines, what):
    """A download of the wrong size or line count is refused, and neither it nor a temporary file stays."""
    url, root, _ = server
    body = (GOOD + "\n") * 3
    (root / "val.jsonl").write_text(body)
    cache = tmp_path / "cache"
    with pytest.raises(HellaSwagError, match=what):
        val_file(str(cache), url=f"{url}/val.jsonl", n_bytes=n_bytes or len(body), n_lines=n_lines)
    assert os.listdir(cache) == []


def test_a_killed_download_is_cleaned_up_by_the_next(tmp_path, server):
    """The temporary file of a download killed earlier (unchanged for minutes) goes at the next download; one
    being written right now (by another process) stays."""
    url, root, _ = server
    body = (GOOD + "\n") * 3
    (root / "val.jsonl").write_text(body)
    cache = tmp_path / "cache"
    cache.mkdir()
    stale, live = cache / "hellaswag_val.jsonl.123.tmp", cache / "hellaswag_val.jsonl.456.tmp"
    stale.write_text("half a download")
    live.write_text("a download in progress")
    os.utime(stale, (time.time() - 3600, time.time() - 3600))
    val_file(str(cache), url=f"{url}/val.jsonl", n_bytes=len(body), n_lines=3)
    assert sorted(os.listdir(cache)) == ["hellaswag_val.jsonl", live.name]


def test_offline_or_http_error_says_pass_data(tmp_path, server):
    """No connection, or an HTTP error: one line that says to pass --data."""
    url, _, _ = server
    for bad, what in ((refused_url(), "no connection"), (f"{url}/missing.jsonl", "HTTP 404")):
        with pytest.raises(HellaSwagError) as e:
            val_file(str(tmp_path / "cache"), url=bad)
        assert what in str(e.value) and "pass --data" in str(e.value) and "\n" not in str(e.value)
    assert os.listdir(tmp_path / "cache") == []

# -----------------------------------------------------------------------------
# packing


def test_pack_example(enc):
    """A packed row is the context once, then the four endings, each placed right after the context."""
    tokens, pos, seg = hellaswag.pack_example(ITEM, enc)
    ctx = enc.encode_ordinary(ITEM["ctx"])
    ends = [enc.encode_ordinary(" " + e) for e in ITEM["endings"]]
    assert tokens == ctx + sum(ends, [])
    assert seg == [0] * len(ctx) + sum(([i + 1] * len(e) for i, e in enumerate(ends)), [])
    assert pos == list(range(len(ctx))) + sum((list(range(len(ctx), len(ctx) + len(e))) for e in ends), [])
    _, _, _, mask = hellaswag.collate_packed([(tokens, pos, seg)])
    j = len(ctx) + len(ends[0]) + 1  # the second token of ending 2 reads the context, itself and its first token
    assert mask[0, 0, j].nonzero().flatten().tolist() == list(range(len(ctx))) + [j - 1, j]


def test_pack_cuts_context_from_the_left(enc):
    """An example longer than the context keeps its endings whole and the last tokens of its context, as many
    as the longest ending leaves room for; none left is a one-line error."""
    ctx = enc.encode_ordinary(ITEM["ctx"])
    ends = [enc.encode_ordinary(" " + e) for e in ITEM["endings"]]
    tokens, pos, seg = hellaswag.pack_example(ITEM, enc, block_size=12)
    keep = 12 - max(map(len, ends))
    assert tokens == ctx[-keep:] + sum(ends, []) and seg.count(0) == keep
    assert max(pos) == 11  # the longest row fills the context exactly
    with pytest.raises(HellaSwagError, match="no room for context"):
        hellaswag.pack_example(ITEM, enc, block_size=max(map(len, ends)))

def test_check_lengths_names_the_example_whose_ending_fills_the_context(enc):
    """check_lengths refuses, naming the example, what pack_example would refuse in the middle of a run."""
    longest = max(len(enc.encode_ordinary(" " + e)) for e in ITEM["endings"])
    hellaswag.check_lengths([ITEM, ITEM], enc, block_size=longest + 1)  # one token of context: fits
    long_one = {**ITEM, "endings": ITEM["endings"][:3] + [" word" * 40]}
    with pytest.raises(HellaSwagError, match=r"^example 2: an ending of 41 tokens leaves no room for context "
                                             r"in the model's 41-token context$"):
        hellaswag.check_lengths([ITEM, long_one], enc, block_size=41)


def test_training_refuses_an_ending_longer_than_the_context_before_it_starts(corpus_shards, tmp_path):
    """train_gpt.py with HellaSwag on and an ending that can't fit its model's context stops with one line
    before its first step, not with a traceback at its first evaluation."""
    import train_gpt
    data = tmp_path / "hellaswag.jsonl"
    data.write_text(json.dumps({**ITEM, "endings": ITEM["endings"][:3] + [" word" * 70]}) + "\n")
    out = tmp_path / "out"
    with pytest.raises(SystemExit) as e:
        train_gpt.main(["--preset", "tiny", "--device", "cpu", "--data-dir", str(corpus_shards), "--out-dir",
                        str(out), "--hellaswag-every", "4", "--hellaswag-data", str(data), "--max-steps", "8"])
    assert str(e.value) == ("error: example 1: an ending of 71 tokens leaves no room for context in the model's "
                            "64-token context (or turn HellaSwag off: --hellaswag-every 0)")
    assert not (out / "log.jsonl").exists() or (out / "log.jsonl").read_text() == ""

# -----------------------------------------------------------------------------
# scoring


def test_uniform_model_losses_are_known(enc, hellaswag_data):
    """A model with every weight zero predicts the uniform distribution: each scored token costs ln(vocab), so
    an ending's summed loss is its length times that, and its mean is that."""
    model = small_gpt()
    with torch.no_grad():
        for p in model.parameters():
            p.zero_()
    examples = load_examples(str(hellaswag_data), limit=8)
    sums, means = score_examples(model, examples, enc, batch_size=3)
    lengths = torch.tensor([[len(enc.encode_ordinary(" " + e)) for e in ex["endings"]] for ex in examples])
    ln_v = torch.log(torch.tensor(float(model.config.vocab_size)))
    torch.testing.assert_close(sums, lengths * ln_v)
    torch.testing.assert_close(means, torch.full_like(means, ln_v.item()))


def test_acc_and_acc_norm_choose_by_sum_and_by_mean():
    """acc picks the ending of the lowest summed loss, acc_norm the lowest mean: crafted so that they differ."""
    sums = torch.tensor([[2.0, 3.0, 3.0, 5.0], [3.0, 1.5, 2.5, 2.0], [0.5, 6.0, 6.0, 6.0]])
    means = torch.tensor([[2.0, 1.5, 3.0, 2.5], [3.0, 1.5, 2.5, 2.0], [0.5, 6.0, 6.0, 6.0]])
    labels = torch.tensor([1, 1, 2])
    assert count_correct(sums, means, labels) == (1, 2)  # example 0: by sum ending 0, by mean ending 1 (right)


@pytest.mark.parametrize("options", [{}, MODERN], ids=["gpt2", "modern"])
def test_fast_path_matches_full_logits(enc, hellaswag_data, options):
    """The packed fast path (one row per example, per-token positions, rotary ones too; the head at the scored
    positions only, soft-capped like the model's logits) equals plain scoring: four rows of context + ending
    through the model's full (padded) logits."""
    model = small_gpt(**options)
    with torch.no_grad():
        for p in model.parameters():  # zero-initialised projections (modern) would hide attention
            p.add_(torch.randn_like(p) * 0.1)
    examples = load_examples(str(hellaswag_data), limit=10)
    packed = score_examples(model, examples, enc, batch_size=4)
    full = plain_hellaswag(lambda idx: model(idx)[0], examples, enc)
    torch.testing.assert_close(packed, full)


def test_bfloat16_scoring_agrees_with_float32(enc, hellaswag_data):
    """Under bfloat16 autocast (the head's matmuls in bfloat16, its log-softmax in float32) the packed path
    picks float32's ending on nearly every example, its losses close to float32's."""
    model = small_gpt()
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 0.1)
    examples = load_examples(str(hellaswag_data), limit=100)
    sums32, means32 = score_examples(model, examples, enc, batch_size=16)
    sums16, means16 = score_examples(model, examples, enc, dtype=torch.bfloat16, batch_size=16)
    assert (means16.argmin(1) == means32.argmin(1)).float().mean() >= 0.95
    assert (means16 - means32).abs().max() < 0.05 * means32.abs().max()


class SmallVocab:
    """GPT-2's tokens folded into a vocabulary of 512: real text lengths, a cheap output head."""

    def __init__(self, enc):
        self.enc = enc

    def encode_ordinary(self, text: str) -> list[int]:
        return [t % 512 for t in self.enc.encode_ordinary(text)]


@pytest.fixture
def one_thread():
    """torch on one thread for the test, then as before. 200 forward passes of tiny tensors: on a busy
    machine, two OpenMP threads waiting on each other at every op made this test 50x slower."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def test_batched_equals_one_at_a_time(enc, hellaswag_data, one_thread):
    """Many padded, packed examples per forward pass give the losses and choices of plain scoring, one
    example at a time."""
    model = small_gpt(vocab_size=512, n_layer=1)
    examples = load_examples(str(hellaswag_data))[::2]  # 200, of every length in the file
    sums, means = score_examples(model, examples, SmallVocab(enc), batch_size=64)
    one_sums, one_means = plain_hellaswag(lambda idx: model(idx)[0], examples, SmallVocab(enc), batch_size=1)
    torch.testing.assert_close(sums, one_sums)
    torch.testing.assert_close(means, one_means)
    assert torch.equal(sums.argmin(1), one_sums.argmin(1)) and torch.equal(means.argmin(1), one_means.argmin(1))


def test_evaluate_reports_acc_by_sum_and_acc_norm_by_mean(enc, hellaswag_data):
    """evaluate's acc is the share of examples whose ending of the lowest summed loss is the label, its acc_norm
    the share whose ending of the lowest mean loss is, both counted here from plain scoring's losses of each
    ending; on a random model whose two differ, so that swapping them can't go unseen."""
    model = random_model(GPTConfig(block_size=160, n_layer=1, n_head=2, n_embd=32, vocab_size=512), seed=1)
    examples = load_examples(str(hellaswag_data), limit=20)
    sums, means = plain_hellaswag(lambda idx: model(idx)[0], examples, SmallVocab(enc))
    for losses in (sums, means):  # no near-tie that the packed path's rounding could tip the other way
        best_two = losses.sort(1).values[:, :2]
        assert (best_two[:, 1] - best_two[:, 0]).min() > 1e-3
    labels = torch.tensor([ex["label"] for ex in examples])
    acc = (sums.argmin(1) == labels).sum().item() / len(examples)
    acc_norm = (means.argmin(1) == labels).sum().item() / len(examples)
    assert acc != acc_norm  # 5 and 7 of 20 with this seed
    assert evaluate(model, examples, SmallVocab(enc), batch_size=8) == {"n": 20, "acc": acc, "acc_norm": acc_norm}


def test_evaluate_restores_mode_and_leaves_rng_alone(enc, hellaswag_data):
    """evaluate runs in eval mode, gives the model back in the mode it had, and draws no random numbers."""
    model = small_gpt()
    seen = []
    model.transformer.h[0].register_forward_hook(lambda m, args, out: seen.append(m.training))
    examples = load_examples(str(hellaswag_data), limit=3)
    for mode in (True, False):
        model.train(mode)
        rng = torch.get_rng_state()
        evaluate(model, examples, enc)
        assert model.training is mode and torch.equal(torch.get_rng_state(), rng)
    assert seen and not any(seen)


def test_ranks_split_the_examples(enc, hellaswag_data):
    """Process r of w takes every w-th example: the ranks' counts add up to the whole."""
    model = small_gpt()
    examples = load_examples(str(hellaswag_data), limit=9)
    whole = evaluate(model, examples, enc)
    parts = [evaluate(model, examples, enc, rank=r, world_size=2) for r in (0, 1)]
    assert [p["n"] for p in parts] == [5, 4]
    assert round(sum(p["acc"] * p["n"] for p in parts)) == round(whole["acc"] * 9)
    assert round(sum(p["acc_norm"] * p["n"] for p in parts)) == round(whole["acc_norm"] * 9)


DIST_SCRIPT = """
import sys, torch, torch.distributed as dist
sys.path[:0] = [{repo!r}, {tests!r}]
from conftest import HELLASWAG, small_gpt
from hellaswag import evaluate, load_examples
from tokenizer import get_encoding
rank = int(sys.argv[1])
dist.init_process_group("gloo", init_method="tcp://127.0.0.1:{port}", rank=rank, world_size=2)
torch.manual_seed(0)  # the same weights in both processes
print(evaluate(small_gpt(), load_examples(str(HELLASWAG), 9), get_encoding(), rank=rank, world_size=2))
dist.destroy_process_group()
"""


@pytest.mark.slow
def test_distributed_ranks_return_the_totals(enc, hellaswag_data):
    """Under torch.distributed (2 processes, gloo), every rank returns the totals of all examples."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    script = DIST_SCRIPT.format(repo=str(REPO), tests=str(REPO / "tests"), port=port)
    procs = [subprocess.Popen([sys.executable, "-c", script, str(r)], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                              text=True) for r in (0, 1)]
    outs = [p.communicate(timeout=120) for p in procs]
    assert all(p.returncode == 0 for p in procs), outs
    torch.manual_seed(0)
    whole = evaluate(small_gpt(), load_examples(str(hellaswag_data), 9), enc)
    assert [out.strip() for out, _ in outs] == [str(whole)] * 2

# -----------------------------------------------------------------------------
# command line


@pytest.fixture(scope="module")
def checkpoint_dir(tmp_path_factory):
    """An out dir holding one checkpoint of a small random model, written as train_gpt.py writes them."""
    import train_gpt
    cfg = train_gpt.TrainConfig(**{**asdict(train_gpt.preset_config("tiny")), "block_size": 160})
    return write_model_checkpoint(tmp_path_factory.mktemp("run"), GPT(train_gpt.model_config(cfg)), cfg, 1)


def test_checkpoint_of_small_vocabulary_is_one_line(tmp_path):
    """A checkpoint whose vocabulary is below GPT-2's can't read HellaSwag's tokens: one line, not an IndexError
    from inside the embedding."""
    import train_gpt
    cfg = train_gpt.TrainConfig(**{**asdict(train_gpt.preset_config("tiny")), "vocab_size": 512})
    out = write_model_checkpoint(tmp_path, GPT(train_gpt.model_config(cfg)), cfg, 1)
    with pytest.raises(SystemExit, match="^error: .*ckpt_000001.pt has a vocabulary of 512 tokens, fewer than GPT-2's 50,257$"):
        hellaswag.main(["--checkpoint", str(out), "--data", str(HELLASWAG), "--limit", "1", "--device", "cpu"])


def test_cli_says_how_many_contexts_are_cut(tmp_path, capsys):
    """Examples longer than the model's context are scored with their context cut from the left: the script
    says how many, rather than report an accuracy over cut stories as if they were whole."""
    import train_gpt
    cfg = train_gpt.preset_config("tiny")  # a 64-token context
    out = write_model_checkpoint(tmp_path, GPT(train_gpt.model_config(cfg)), cfg, 1)
    data = write_jsonl(tmp_path / "hs.jsonl", [ITEM, dict(ITEM, ctx=" ".join([ITEM["ctx"]] * 8)), ITEM])
    res = hellaswag.main(["--checkpoint", str(out), "--data", data, "--device", "cpu"])
    assert res["n"] == 3
    assert ("note: 1 of 3 examples are longer than the model's 64-token context: their contexts lose tokens "
            "from the left\n") in capsys.readouterr().err


def test_cli_prints_key_values_last(checkpoint_dir, capsys):
    """python hellaswag.py --checkpoint DIR --data F --limit N: the last line is n=, acc=, acc_norm=, ..."""
    res = hellaswag.main(["--checkpoint", str(checkpoint_dir), "--data", str(HELLASWAG),
                          "--limit", "6", "--device", "cpu"])
    last = capsys.readouterr().out.strip().splitlines()[-1]
    values = dict(kv.split("=") for kv in last.split())
    assert list(values)[:3] == ["n", "acc", "acc_norm"] and "seconds" in values
    assert values["n"] == "6" and res["n"] == 6 and float(values["acc"]) == pytest.approx(res["acc"], abs=1e-4)


@pytest.mark.parametrize("flags,what", [
    (["--limit", "0"], "error: --limit must be positive, got 0"),
    (["--batch-size", "-1"], "error: --batch-size must be positive, got -1"),
    (["--data", "MISSING"], "error: MISSING: file not found"),
])
def test_cli_errors_are_one_line(checkpoint_dir, flags, what):
    """Bad flag values and bad data files stop the script with one line."""
    with pytest.raises(SystemExit) as e:
        hellaswag.main(["--checkpoint", str(checkpoint_dir), *flags])
    assert str(e.value) == what


@pytest.mark.slow
def test_model_gpt2_offline_is_one_line(tmp_path):
    """--model gpt2 without network or a cached copy: exit status 1 and one line of error."""
    data = write_jsonl(tmp_path / "hs.jsonl", [ITEM])
    env = dict(os.environ, HF_HUB_OFFLINE="1", HF_HOME=str(tmp_path / "hf"))
    r = subprocess.run([sys.executable, str(REPO / "hellaswag.py"), "--model", "gpt2", "--data", data],
                       capture_output=True, text=True, env=env, timeout=120)
    assert r.returncode == 1
    assert r.stderr.strip().splitlines() == [
        "error: cannot load gpt2 from the Hugging Face hub (no network, and not in its local cache); "
        "evaluate a --checkpoint instead"]
