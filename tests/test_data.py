"""python -m pytest tests/test_data.py -v

Token shards (shards.py's writer and reader, their header checks), fineweb.py on the committed corpus and
other inputs, and DataLoaderLite: the target shift, rank striding, shard wrap, exact state.
"""

import json
import os
import re
import subprocess
import sys

import numpy as np
import pytest
import torch

import fineweb
from conftest import REPO
from dataloader import DataLoaderLite
from shards import ShardError, list_shards, read_shard, shard_path, write_shard
from tokenizer import EOT, get_encoding


def make_shards(tmp_path, sizes, start=0):
    """Shards of consecutive ids (start, start+1, ...), the first one val: easy to check positions."""
    n = start
    for i, size in enumerate(sizes):
        write_shard(shard_path(str(tmp_path), "val" if i == 0 else "train", i),
                    np.arange(n, n + size, dtype=np.uint16))
        n += size
    return tmp_path


def test_shard_round_trip(tmp_path):
    """write_shard then read_shard gives back the same uint16 tokens."""
    tokens = np.random.default_rng(0).integers(0, 50257, 1000).astype(np.uint16)
    write_shard(str(tmp_path / "val_000000.bin"), tokens)
    assert np.array_equal(read_shard(str(tmp_path / "val_000000.bin")), tokens)
    assert not list(tmp_path.glob("*.tmp"))  # the temporary file was renamed away


@pytest.mark.parametrize("damage,message", [
    (lambda b: b"\x00\x00\x00\x00" + b[4:], "bad magic"),
    (lambda b: b[:4] + np.int32(7).tobytes() + b[8:], "version 7"),
    (lambda b: b[:-2], "truncated"),
    (lambda b: b[:100], "bad magic"),  # shorter than a header
])
def test_shard_header_is_checked(tmp_path, damage, message):
    """A wrong magic number, an unknown version or a truncated body raise ShardError, not garbage."""
    path = tmp_path / "train_000001.bin"
    write_shard(str(path), np.arange(100, dtype=np.uint16))
    path.write_bytes(damage(path.read_bytes()))
    with pytest.raises(ShardError, match=message):
        read_shard(str(path))


def test_fineweb_documents_and_splits(corpus_slice, corpus_shards):
    """Shards hold every document as <|endoftext|> + its tokens, in order; the first shard is val."""
    enc = get_encoding()
    expected = []
    with open(corpus_slice) as f:
        for line in f:
            expected += [EOT] + enc.encode_ordinary(json.loads(line)["text"])
    val, train = list_shards(str(corpus_shards), "val"), list_shards(str(corpus_shards), "train")
    assert [os.path.basename(p) for p in val] == ["val_000000.bin"]
    assert os.path.basename(train[0]) == "train_000001.bin" and len(train) == 6  # 101,056 tokens in all
    got = np.concatenate([read_shard(p) for p in val + train])
    assert len(read_shard(val[0])) == 16384
    assert got.tolist() == expected


def test_fineweb_same_bytes_for_any_worker_count(corpus_slice, tmp_path):
    """1 and 2 tokenizer processes write byte-identical shards."""
    outs = []
    for workers in (1, 2):
        out = tmp_path / f"w{workers}"
        fineweb.main(["--input", str(corpus_slice), "--out-dir", str(out), "--shard-size", "30000",
                      "--workers", str(workers)])
        outs.append({p.name: p.read_bytes() for p in sorted(out.iterdir())})
    assert outs[0] == outs[1] and len(outs[0]) >= 3


@pytest.mark.parametrize("block,max_tokens", [(3000, 0), (3000, 40000), (50_000, 0)])
def test_fineweb_jsonl_blocks_same_bytes(corpus_slice, corpus_shards, tmp_path, monkeypatch, block, max_tokens):
    """A .jsonl read in blocks of any size (here also smaller than its lines), tokenized by 2 processes,
    gives the shards of one process reading it whole; --max-tokens stops it (and its reader) early."""
    monkeypatch.setattr(fineweb, "JSONL_BLOCK", block)
    out = tmp_path / "out"
    fineweb.main(["--input", str(corpus_slice), "--out-dir", str(out), "--shard-size", "16384", "--workers", "2",
                  "--max-tokens", str(max_tokens)])
    ref = [p.read_bytes() for p in sorted(corpus_shards.glob("*.bin"))]
    got = [p.read_bytes() for p in sorted(out.glob("*.bin"))]
    if not max_tokens:
        assert got == ref and len(got) >= 4
    else:
        def tokens(d):  # in order: val, then train
            return np.concatenate([read_shard(p) for p in list_shards(str(d), "val") + list_shards(str(d), "train")])
        assert tokens(out).tolist() == tokens(corpus_shards)[:max_tokens].tolist()


def test_fineweb_reader_waits_for_the_tokenizers():
    """The reading runs at most a few items ahead of the shard writing: a reader faster than the tokenizers
    (FineWeb-Edu from a fast network, a local disk) doesn't queue the whole input in memory."""
    import multiprocessing as mp
    import time
    read = []

    def work():
        for i in range(40):
            read.append(i)
            yield None, None, [f"document {i}"]
    work = fineweb.Throttle(work(), limit=3)
    ahead = 0
    with mp.Pool(2) as pool:
        for k, _ in enumerate(work.documents(pool.imap(fineweb.tokenize_work, work))):
            ahead = max(ahead, len(read) - k)
            time.sleep(0.01)
    assert len(read) == 40 and ahead <= 3 + 2, ahead  # limit, + the item being consumed, + one read waiting


def test_fineweb_text_parquet_and_max_tokens(tmp_path):
    """.txt (one document per file) and .parquet inputs work, and --max-tokens stops at that count."""
    import pyarrow as pa
    import pyarrow.parquet as pq
    (tmp_path / "a.txt").write_text("The first document.\nIt has two lines.\n")
    pq.write_table(pa.table({"text": ["Second document.", "Third one, a bit longer than that."]}),
                   tmp_path / "b.parquet")
    out = tmp_path / "out"
    fineweb.main(["--input", str(tmp_path / "a.txt"), str(tmp_path / "b.parquet"), "--out-dir", str(out)])
    enc = get_encoding()
    want = [EOT] + enc.encode_ordinary("The first document.\nIt has two lines.\n")
    for t in ("Second document.", "Third one, a bit longer than that."):
        want += [EOT] + enc.encode_ordinary(t)
    shards = list_shards(str(out), "val") + list_shards(str(out), "train")
    assert np.concatenate([read_shard(p) for p in shards]).tolist() == want
    # the input is smaller than one shard: 10% of it is val, the rest train
    assert len(read_shard(shards[0])) == len(want) // 10
    out2 = tmp_path / "out2"
    fineweb.main(["--input", str(tmp_path / "a.txt"), str(tmp_path / "b.parquet"), "--out-dir", str(out2),
                  "--max-tokens", "15", "--shard-size", "10"])
    shards = list_shards(str(out2), "val") + list_shards(str(out2), "train")
    assert np.concatenate([read_shard(p) for p in shards]).tolist() == want[:15]


def test_fineweb_bad_input_type(tmp_path):
    """An input that isn't .txt, .jsonl or .parquet is refused before any work."""
    (tmp_path / "a.csv").write_text("text\nhello\n")
    with pytest.raises(SystemExit, match="must be .txt, .jsonl or .parquet"):
        fineweb.main(["--input", str(tmp_path / "a.csv"), "--out-dir", str(tmp_path / "out")])


def test_fineweb_repeated_input_flag_reads_every_file():
    """--input a --input b reads both files; argparse's default kept only the last one, silently."""
    assert fineweb.parse_args(["--input", "a.txt", "--input", "b.jsonl", "c.jsonl"]).input == [
        "a.txt", "b.jsonl", "c.jsonl"]


def test_fineweb_txt_byte_order_mark_is_not_text(tmp_path):
    """A .txt starting with a UTF-8 byte order mark (some Windows editors write one) is read without it, as a
    .jsonl is: it used to become 3 tokens of garbage at the start of the document."""
    path = tmp_path / "a.txt"
    path.write_bytes(b"\xef\xbb\xbfHello, world.")
    assert [t for item in fineweb.iter_work([str(path)]) for t in fineweb.item_texts(item)] == ["Hello, world."]


@pytest.mark.parametrize("data", [b"\xef", b"\xef\xbb", b"\xef\xbbHello"])
def test_fineweb_txt_byte_order_mark_cut_short_is_not_utf8(tmp_path, data):
    """A .txt starting with the first bytes of a byte order mark only is not UTF-8, and says so in one line:
    Python's utf-8-sig decoder read b"\\xef" and b"\\xef\\xbb" as an empty document (the third case was
    refused before too)."""
    path = tmp_path / "a.txt"
    path.write_bytes(data)
    with pytest.raises(fineweb.InputError, match=r"a\.txt is not UTF-8 text: byte 0 is 0xef"):
        [t for item in fineweb.iter_work([str(path)]) for t in fineweb.item_texts(item)]


def test_fineweb_warns_when_val_outweighs_train(tmp_path, capsys):
    """Input a little over one shard puts most of it in the val shard: a warning says so and how to fix it;
    an even split draws none."""
    path = tmp_path / "a.jsonl"
    path.write_text("".join(json.dumps({"text": f"Document number {i} says hello."}) + "\n" for i in range(6)))
    fineweb.main(["--input", str(path), "--out-dir", str(tmp_path / "out"), "--shard-size", "40", "--workers", "1"])
    err = capsys.readouterr().err
    assert re.search(r"warning: the val shard holds 40 of the \d+ tokens, train only \d+: .*smaller --shard-size", err)
    fineweb.main(["--input", str(path), "--out-dir", str(tmp_path / "even"), "--shard-size", "20", "--workers", "1"])
    assert "warning" not in capsys.readouterr().err
    # one token in all (an empty document's <|endoftext|>): too little to split between val and train, so no
    # train shard, which train_gpt.py needs; it used to pass without a word
    (tmp_path / "empty.jsonl").write_text('{"text": ""}\n')
    fineweb.main(["--input", str(tmp_path / "empty.jsonl"), "--out-dir", str(tmp_path / "one"), "--workers", "1"])
    assert "warning: all 1 tokens went to the val shard (the first shard is val): train_gpt.py needs train shards " \
        "too" in capsys.readouterr().err
    assert sorted(os.listdir(tmp_path / "one")) == ["fineweb_progress.json", "val_000000.bin"]


@pytest.mark.slow
def test_fineweb_offline_hub_says_use_input(tmp_path):
    """Without the hub, the default source fails with one line that points to --input, and leaves no out dir
    (one with a manifest alone would send train_gpt.py's user back to `python fineweb.py`)."""
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    r = subprocess.run([sys.executable, str(REPO / "fineweb.py"), "--out-dir", str(tmp_path / "out")],
                       capture_output=True, text=True, env=env, timeout=120)
    assert r.returncode != 0
    last = r.stderr.strip().splitlines()[-1]
    assert last.startswith("error:") and "--input" in last
    assert "Traceback" not in r.stderr
    assert not (tmp_path / "out").exists()


def test_loader_shifts_targets_by_one(tmp_path):
    """y is x shifted left by one token."""
    make_shards(tmp_path, [100, 1000])
    x, y = DataLoaderLite(str(tmp_path), "train", 2, 8).next_batch()
    assert x.shape == y.shape == (2, 8)
    assert torch.equal(x.flatten() + 1, y.flatten())  # consecutive ids
    assert x[0, 0].item() == 100 and x[1, 0].item() == 108


def test_loader_reads_a_folder_named_like_a_glob_pattern(tmp_path):
    """A data dir such as data[1] is a name, not a pattern: its shards are found (glob would look in data1)."""
    data = tmp_path / "data[1]"
    data.mkdir()
    make_shards(data, [100, 1000])
    assert list_shards(str(data), "train") == [str(data / "train_000001.bin")]
    assert DataLoaderLite(str(data), "train", 2, 8).next_batch()[0][0, 0].item() == 100


def test_loader_ranks_are_disjoint(tmp_path):
    """Two ranks together read what one process reads, in turn, and never the same tokens."""
    make_shards(tmp_path, [100, 193, 193])  # 193 = 12 rounds of 2 ranks x 8 tokens, + 1 for the last target
    single = DataLoaderLite(str(tmp_path), "train", 2, 4)
    ranks = [DataLoaderLite(str(tmp_path), "train", 2, 4, rank=r, world_size=2) for r in range(2)]
    seen = set()
    for _ in range(20):
        for r in ranks:
            x, _ = r.next_batch()
            assert torch.equal(x, single.next_batch()[0])
            assert not seen & set(x.flatten().tolist())
            seen |= set(x.flatten().tolist())


def test_loader_wraps_to_next_shard_and_around(tmp_path):
    """At the end of a shard the loader moves to the next one, and from the last back to the first."""
    make_shards(tmp_path, [100, 50, 50])  # train shards hold ids 100..149 and 150..199
    loader = DataLoaderLite(str(tmp_path), "train", 1, 16)
    firsts = [loader.next_batch()[0][0, 0].item() for _ in range(7)]
    # 50 tokens: batches at 0, 16, 32 (48 + 16 + 1 > 50: next shard), the same in the next shard, wrap
    assert firsts == [100, 116, 132, 150, 166, 182, 100]


def test_loader_state_round_trip(tmp_path):
    """A loader restored from state_dict() continues exactly where the first one was."""
    make_shards(tmp_path, [100, 300, 300])
    a = DataLoaderLite(str(tmp_path), "train", 2, 8)
    for _ in range(25):
        a.next_batch()
    b = DataLoaderLite(str(tmp_path), "train", 2, 8)
    b.load_state_dict(a.state_dict())
    for _ in range(30):
        assert torch.equal(a.next_batch()[0], b.next_batch()[0])


def test_loader_leaves_out_a_shard_smaller_than_a_batch(tmp_path):
    """A train shard too small for one batch (fineweb.py's last holds what was left over) is left out, and
    named; the loader reads the others in turn."""
    make_shards(tmp_path, [100, 40, 10, 40])  # train: ids 100..139, 140..149 (too small for 2 x 8 + 1), 150..189
    loader = DataLoaderLite(str(tmp_path), "train", 2, 8)
    assert [os.path.basename(p) for p in loader.skipped] == ["train_000002.bin"]
    firsts = [loader.next_batch()[0][0, 0].item() for _ in range(6)]
    assert firsts == [100, 116, 150, 166, 100, 116]
    assert loader.rounds == 4  # batches before it wraps


def test_loader_stops_with_one_line_at_a_foreign_token_found_mid_run(tmp_path):
    """A token id past the vocabulary in a shard the run reaches later: one line, not a traceback from torch."""
    make_shards(tmp_path, [100, 40])
    write_shard(shard_path(str(tmp_path), "train", 2), np.full(40, 60000, dtype=np.uint16))
    loader = DataLoaderLite(str(tmp_path), "train", 2, 8, vocab_size=50304)
    with pytest.raises(SystemExit, match=r"^error: .*train_000002.bin holds token id 60000, .*checkpoints written "
                                         r"so far are intact$"):
        for _ in range(3):
            loader.next_batch()


def test_loader_errors(tmp_path):
    """A missing data dir, a split without shards, or a shard smaller than a batch raise ShardError."""
    with pytest.raises(ShardError, match="not found"):
        DataLoaderLite(str(tmp_path / "nope"), "train", 2, 8)
    make_shards(tmp_path, [100])
    with pytest.raises(ShardError, match="no train shards"):
        DataLoaderLite(str(tmp_path), "train", 2, 8)
    with pytest.raises(ShardError, match="fewer than one batch"):
        DataLoaderLite(str(tmp_path), "val", 4, 32)


@pytest.mark.parametrize("workers", ["1", "2"])
def test_fineweb_jsonl_without_text(tmp_path, workers):
    """A jsonl record without a 'text' field stops the job with an error naming the file and line,
    also when the records are read by the thread that feeds the worker pool."""
    (tmp_path / "a.jsonl").write_text('{"text": "fine"}\n{"body": "no text here"}\n')
    with pytest.raises(SystemExit, match="a.jsonl, line 2: no 'text' field"):
        fineweb.main(["--input", str(tmp_path / "a.jsonl"), "--out-dir", str(tmp_path / "out"), "--workers", workers])
    assert not list((tmp_path / "out").glob("*.bin"))
