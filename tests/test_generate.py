"""python -m pytest tests/test_generate.py -v"""

import io

import pytest
import torch

import generate
from model import GPT, PRESETS, GPTConfig, KVCache, sample_next
from tokenizer import get_encoding
from train_gpt import sample_text

TINY = PRESETS["tiny"]  # block_size 64


def test_cached_logits_match_full_forward():
    """Prompt then one token at a time through the KV cache gives the logits of a full forward pass."""
    model = GPT(TINY).eval()
    idx = torch.randint(0, 50257, (3, 40))
    full = model.lm_head(model.hidden_states(idx))  # (3, 40, vocab)
    cache = [KVCache(40) for _ in model.transformer.h]
    steps = [model.lm_head(model.hidden_states(idx[:, :25], cache=cache))]
    for t in range(25, 40):
        steps.append(model.lm_head(model.hidden_states(idx[:, t:t + 1], cache=cache)))
    cached = torch.cat(steps, dim=1)
    torch.testing.assert_close(cached, full, rtol=1e-5, atol=1e-5)
    assert cache[0].len == 40


@pytest.mark.parametrize("prompt_len,new", [(1, 30), (10, 90)])  # 10 + 90 runs past the 64-token context
def test_cache_samples_the_same_tokens_as_recompute(prompt_len, new):
    """With the same seed, sampling with the KV cache draws exactly the tokens of full recompute,
    also once the sequence is longer than the context."""
    model = GPT(TINY).eval()
    idx = torch.randint(0, 50257, (4, prompt_len))
    kw = dict(top_k=50, n_vocab=50257)
    a = model.generate(idx, new, generator=torch.Generator().manual_seed(7), use_cache=True, **kw)
    b = model.generate(idx, new, generator=torch.Generator().manual_seed(7), use_cache=False, **kw)
    assert a.shape == (4, prompt_len + new)
    assert torch.equal(a, b)


def test_trained_like_model_cache_equals_recompute():
    """On a model with sharper (less uniform) predictions, cache and recompute still agree token for token."""
    torch.manual_seed(3)
    model = GPT(GPTConfig(block_size=128, vocab_size=512, n_layer=3, n_head=4, n_embd=64)).eval()
    with torch.no_grad():
        model.lm_head.weight.mul_(20)  # peaked distributions, like a trained model's
    idx = torch.randint(0, 512, (2, 5))
    for top_p in (None, 0.9):
        a = model.generate(idx, 100, top_p=top_p, generator=torch.Generator().manual_seed(1))
        b = model.generate(idx, 100, top_p=top_p, generator=torch.Generator().manual_seed(1), use_cache=False)
        assert torch.equal(a, b)


def test_cache_refuses_overflow_and_chunks():
    """The cache says so when it is full, and a cached call after the prompt takes one token."""
    model = GPT(TINY).eval()
    cache = [KVCache(8) for _ in model.transformer.h]
    model.hidden_states(torch.zeros(1, 8, dtype=torch.long), cache=cache)
    with pytest.raises(ValueError, match="one token at a time"):
        model.hidden_states(torch.zeros(1, 2, dtype=torch.long), cache=cache)
    with pytest.raises(ValueError, match="KV cache full"):
        model.hidden_states(torch.zeros(1, 1, dtype=torch.long), cache=cache)


def test_stream_yields_each_token():
    """stream yields max_new_tokens tensors of shape (B, 1), the tokens that generate returns."""
    model = GPT(TINY).eval()
    idx = torch.randint(0, 50257, (2, 3))
    tokens = list(model.stream(idx, 6, generator=torch.Generator().manual_seed(0)))
    assert len(tokens) == 6 and all(t.shape == (2, 1) for t in tokens)
    out = model.generate(idx, 6, generator=torch.Generator().manual_seed(0))
    assert torch.equal(out[:, 3:], torch.cat(tokens, dim=1))


def test_top_p_keeps_the_nucleus():
    """top_p keeps the fewest most likely tokens whose probabilities reach p, and samples only those."""
    probs = torch.tensor([[0.5, 0.3, 0.15, 0.05]])
    logits = probs.log().repeat(2000, 1)
    g = torch.Generator().manual_seed(0)
    assert set(sample_next(logits, top_p=0.7, generator=g).unique().tolist()) == {0, 1}  # 0.5 < 0.7 <= 0.8
    assert set(sample_next(logits, top_p=0.85, generator=g).unique().tolist()) == {0, 1, 2}
    assert set(sample_next(logits, top_p=0.01, generator=g).unique().tolist()) == {0}  # the top token always stays
    drawn = sample_next(logits, top_p=0.8, generator=g)  # exactly 0.8: tokens 0 and 1 reach it
    assert set(drawn.unique().tolist()) == {0, 1}
    # within the nucleus, the renormalised probabilities: 0.5 / 0.8 = 0.625 for token 0
    assert abs((drawn == 0).float().mean().item() - 0.625) < 0.04


def test_top_k_and_padding_filters():
    """top_k=2 draws only the two most likely; n_vocab cuts the padded ids even when they are likeliest."""
    logits = torch.tensor([[1.0, 3.0, 2.0, 0.0, 9.0]]).repeat(500, 1)
    g = torch.Generator().manual_seed(0)
    assert set(sample_next(logits, top_k=2, n_vocab=4, generator=g).unique().tolist()) == {1, 2}
    assert set(sample_next(logits, top_k=1, generator=g).unique().tolist()) == {4}


def test_sample_text_same_seed_same_text():
    """sample_text: the same seed gives the same samples, with the cache as without."""
    model = GPT(TINY)
    enc = get_encoding()
    a = sample_text(model, enc, "Hello", 2, 10, top_k=50, seed=5, device="cpu")
    b = sample_text(model, enc, "Hello", 2, 10, top_k=50, seed=5, device="cpu")
    assert a == b and all(s.startswith("Hello") for s in a)


def test_stream_sample_prints_what_sample_text_returns():
    """generate.py's streamed sample writes the text that sample_text draws for one sample and the same seed."""
    model = GPT(TINY)
    enc = get_encoding()
    out = io.StringIO()
    streamed = generate.stream_sample(model, enc, "The cat", 20, top_k=None, top_p=0.95, seed=3, device="cpu",
                                      dtype=torch.float32, out=out)
    whole = sample_text(model, enc, "The cat", 1, 20, top_k=None, top_p=0.95, seed=3, device="cpu")[0]
    assert streamed == whole
    assert out.getvalue() == whole + "\n"


def test_stream_sample_splits_utf8_safely():
    """A character whose bytes span two tokens is printed once whole, never as a replacement mark."""
    enc = get_encoding()
    text = "naïve café — 日本語"
    ids = enc.encode_ordinary(text)
    assert any(not _valid_utf8(enc.decode_single_token_bytes(i)) for i in ids)  # some token splits a character
    import codecs
    utf8 = codecs.getincrementaldecoder("utf-8")(errors="replace")
    assert "".join(utf8.decode(enc.decode_single_token_bytes(i)) for i in ids) + utf8.decode(b"", final=True) == text


def _valid_utf8(b: bytes) -> bool:
    try:
        b.decode("utf-8")
        return True
    except UnicodeDecodeError:
        return False


@pytest.mark.parametrize("flags,message", [
    (["--top-p", "0"], "--top-p must be in (0, 1]"),
    (["--top-p", "1.5"], "--top-p must be in (0, 1]"),
    (["--temperature", "0"], "--temperature must be positive"),
    (["--top-k", "-1"], "--top-k can't be negative"),
    (["--model", "gpt2", "--checkpoint", "run1"], "not allowed with argument"),
])
def test_bad_flags(flags, message, capsys):
    """Bad flags stop with argparse's one-line usage error naming the flag."""
    with pytest.raises(SystemExit) as e:
        generate.parse_args(flags)
    assert e.value.code == 2
    assert message in capsys.readouterr().err


def test_unreachable_model_is_one_line(monkeypatch, capsys):
    """--model without network access (and no cached copy) is one line of error, not a traceback."""
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(SystemExit) as e:
        generate.main(["--model", "gpt2", "--device", "cpu"])
    msg = str(e.value.code)
    assert msg.startswith("error: cannot load --model gpt2") and "\n" not in msg
