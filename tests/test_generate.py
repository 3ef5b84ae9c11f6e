"""python -m pytest tests/test_generate.py -v

Sampling: the KV cache against full recompute, the top-k / top-p / padding filters, the streaming of
generate.py (whole UTF-8 characters), its --top-k, --top-p and --temperature reaching the sampler, and its
command-line errors. generate.py on a trained checkpoint is tested in test_train.py.
"""

import io
import os
import signal
import subprocess
import sys
from dataclasses import asdict

import pytest
import torch

import generate
from conftest import MODERN, REPO, TINY, random_model
from checkpoint import checkpoint_path, save_checkpoint
from generate import sample_text
from model import GPT, GPTConfig, KVCache, head_logits, sample_next
from tokenizer import EOT, get_encoding


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


def peaked_model() -> GPT:
    """A model with sharp (less uniform) predictions, like a trained model's."""
    torch.manual_seed(3)
    model = GPT(GPTConfig(block_size=128, vocab_size=512, n_layer=3, n_head=4, n_embd=64)).eval()
    with torch.no_grad():
        model.lm_head.weight.mul_(20)
    return model


@pytest.mark.parametrize("make_model,prompt_len,new,kw", [
    (lambda: GPT(TINY).eval(), 1, 30, dict(top_k=50, n_vocab=50257)),
    (lambda: GPT(TINY).eval(), 10, 90, dict(top_k=50, n_vocab=50257)),  # 100 tokens: past the 64-token context
    (peaked_model, 5, 100, dict()),
    (peaked_model, 5, 100, dict(top_p=0.9)),
    # rotary keys are cached after rotation; past the context both recompute the window
    (lambda: random_model(GPTConfig(**{**vars(TINY), **MODERN})), 10, 70, dict(top_k=50)),
], ids=["gpt2", "gpt2 past the context", "peaked", "peaked top_p", "modern past the context"])
def test_cache_samples_the_same_tokens_as_recompute(make_model, prompt_len, new, kw):
    """With the same seed, sampling with the KV cache draws exactly the tokens of full recompute: GPT-2 and the
    modern options, uniform and peaked predictions, also once the sequence is longer than the context."""
    model = make_model()
    idx = torch.randint(0, model.config.vocab_size, (2, prompt_len))
    a = model.generate(idx, new, generator=torch.Generator().manual_seed(7), use_cache=True, **kw)
    b = model.generate(idx, new, generator=torch.Generator().manual_seed(7), use_cache=False, **kw)
    assert a.shape == (2, prompt_len + new)
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


@pytest.mark.parametrize("shape", [(2, 0), (5,)])
def test_prompt_without_tokens_or_batch_is_refused(shape):
    """An empty prompt (nothing to predict the first token from) or one without its batch dimension."""
    with pytest.raises(ValueError, match="the prompt must be token ids of shape"):
        GPT(TINY).generate(torch.zeros(shape, dtype=torch.long), 3)


def test_stream_yields_each_token():
    """stream yields max_new_tokens tensors of shape (B, 1), the tokens that generate returns."""
    model = GPT(TINY).eval()
    idx = torch.randint(0, 50257, (2, 3))
    tokens = list(model.stream(idx, 6, generator=torch.Generator().manual_seed(0)))
    assert len(tokens) == 6 and all(t.shape == (2, 1) for t in tokens)
    out = model.generate(idx, 6, generator=torch.Generator().manual_seed(0))
    assert torch.equal(out[:, 3:], torch.cat(tokens, dim=1))


@pytest.mark.parametrize("temperature", [0.5, 1.0, 2.0])
def test_temperature_divides_the_logits(temperature):
    """A step draws from the head's logits divided by the temperature (at 1.0 the division is skipped):
    64 rows, each the very token sample_next draws from those logits with the same seed."""
    torch.manual_seed(0)
    model = GPT(GPTConfig(block_size=64, vocab_size=512, n_layer=2, n_head=2, n_embd=32)).eval()
    idx = torch.randint(0, 512, (64, 10), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        model.lm_head.weight.mul_(5)  # a spread of likely tokens, so that the temperature moves the draws
        logits = head_logits(model.hidden_states(idx)[:, -1], model.lm_head.weight) / temperature
    want = sample_next(logits, generator=torch.Generator().manual_seed(1))
    got = model.generate(idx, 1, temperature=temperature, generator=torch.Generator().manual_seed(1))[:, -1:]
    assert torch.equal(got, want)
    hotter = sample_next(logits * temperature / 4.0, generator=torch.Generator().manual_seed(1))
    assert not torch.equal(got, hotter)  # the draws do depend on the temperature


def test_top_k_keeps_the_likeliest_at_any_temperature():
    """The top k are the k likeliest tokens even at a temperature that rounds every logit / temperature to 0
    in float32 (then drawn evenly), not the first k ids."""
    logits = torch.arange(10.0).repeat(1000, 1)  # token 9 likeliest
    drawn = sample_next(logits, top_k=2, temperature=1e300, generator=torch.Generator().manual_seed(0))
    assert set(drawn.unique().tolist()) == {8, 9}
    assert abs((drawn == 9).float().mean().item() - 0.5) < 0.05


@pytest.mark.parametrize("filters", [{}, {"top_k": 2}, {"top_p": 0.9}])
def test_tiny_temperature_picks_the_likeliest(filters):
    """A temperature near 0 (greedy, as asked) draws the likeliest token, with or without top-k or top-p: below
    ~1e-38 logits / temperature overflowed to inf, the softmax gave NaN, and the last candidate was drawn."""
    logits = torch.tensor([[1.0, 3.0, 2.0, -1.0]]).repeat(4, 1)  # token 1 likeliest
    for temperature in (1e-30, 1e-40):
        drawn = sample_next(logits, temperature=temperature, generator=torch.Generator().manual_seed(0), **filters)
        assert drawn.flatten().tolist() == [1] * 4


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


def test_top_k_draws_the_renormalised_probabilities():
    """Among the top k, each token comes up as often as its probability renormalised over the k; with top_p
    too, the nucleus is taken from those k."""
    probs = torch.tensor([[0.1, 0.2, 0.3, 0.4]])
    logits = probs.log().repeat(4000, 1)
    g = torch.Generator().manual_seed(0)
    drawn = sample_next(logits, top_k=2, generator=g)
    assert set(drawn.unique().tolist()) == {2, 3}
    assert abs((drawn == 3).float().mean().item() - 0.4 / 0.7) < 0.03
    drawn = sample_next(logits, top_k=3, top_p=0.5, generator=g)  # of 0.4, 0.3, 0.2 (sum 0.9): 0.44 < 0.5 <= 0.78
    assert set(drawn.unique().tolist()) == {2, 3}


def test_sample_text_is_seeded_sampling():
    """sample_text draws, from its own generator seeded with `seed`, the tokens that sampling without the cache
    draws from that seed; the global random state is left alone."""
    model = GPT(TINY)
    enc = get_encoding()
    rng = torch.get_rng_state()
    got = sample_text(model, enc, "Hello", 2, 10, top_k=50, seed=5, device="cpu")
    assert torch.equal(torch.get_rng_state(), rng)
    idx = torch.tensor([enc.encode_ordinary("Hello")] * 2)
    want = model.eval().generate(idx, 10, top_k=50, n_vocab=enc.n_vocab, generator=torch.Generator().manual_seed(5),
                                 use_cache=False)
    assert got == [enc.decode(row.tolist()) for row in want]
    assert got[0] != got[1] and all(s.startswith("Hello") for s in got)


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


def test_empty_prompt_starts_a_new_document():
    """An empty prompt (train_gpt.py --sample-prompt "", generate.py --prompt "") samples from <|endoftext|>,
    where every document starts, and the text returned leaves that token out."""
    model = GPT(TINY)
    enc = get_encoding()
    got = sample_text(model, enc, "", 2, 8, top_k=50, seed=1, device="cpu")
    want = model.eval().generate(torch.full((2, 1), EOT), 8, top_k=50, n_vocab=enc.n_vocab,
                                 generator=torch.Generator().manual_seed(1))
    assert got == [enc.decode(row[1:].tolist()) for row in want]
    one = sample_text(model, enc, "", 1, 8, top_k=50, seed=1, device="cpu")[0]
    assert generate.stream_sample(model, enc, "", 8, top_k=50, top_p=None, seed=1, device="cpu",
                                  dtype=torch.float32, out=io.StringIO()) == one


def test_endoftext_in_prompt_is_the_token():
    """"<|endoftext|>" in a prompt is the document delimiter the samples print for it, not the 7 tokens of its
    characters: "<|endoftext|>The" starts a new document with "The"."""
    enc = get_encoding()
    assert generate.prompt_tokens(enc, "<|endoftext|>The") == [EOT] + enc.encode_ordinary("The")
    assert generate.prompt_tokens(enc, "end.<|endoftext|>") == enc.encode_ordinary("end.") + [EOT]


@pytest.mark.parametrize("options,message", [
    ({"temperature": 0.0}, "temperature must be positive, got 0.0"),
    ({"temperature": float("nan")}, "temperature must be positive, got nan"),
    ({"top_k": 0}, "top_k must be at least 1"),
    ({"top_p": 0.0}, r"top_p must be in \(0, 1\], got 0.0"),
    ({"top_p": 1.5}, r"top_p must be in \(0, 1\], got 1.5"),
])
def test_sampling_refuses_bad_options_and_goes_on_training(options, message):
    """A temperature or filter that can't be sampled from is refused by name (top_k=0 used to skip the cache,
    temperature 0 to draw the padding ids), and a model sampled during training is left training."""
    model = GPT(TINY).train()
    with pytest.raises(ValueError, match=message):
        sample_text(model, get_encoding(), "Hello", 1, 2, seed=0, device="cpu", **{"top_k": None, **options})
    assert model.training


def save_model(out, model: GPT, **saved_config) -> str:
    """An out dir holding one checkpoint of model, its saved configuration changed by saved_config."""
    save_checkpoint(checkpoint_path(str(out), 1), {
        "model": model.state_dict(), "optimizer": {}, "step": 1, "events_done": True,
        "config": {**asdict(model.config), **saved_config}, "train_loader": {}, "rng": {}, "log_bytes": 0})
    return str(out)


@pytest.mark.parametrize("case", ["small vocabulary", "unknown option", "weights of another shape"])
def test_checkpoint_errors_are_one_line(tmp_path, case):
    """A checkpoint generate.py can't sample from stops it with one line saying why, not torch's traceback
    (a vocabulary below GPT-2's used to fail inside the embedding)."""
    if case == "small vocabulary":
        out = save_model(tmp_path, GPT(GPTConfig(**{**asdict(TINY), "vocab_size": 512})))
        what = "the model has a vocabulary of 512 tokens, fewer than GPT-2's 50,257"
    elif case == "unknown option":
        out = save_model(tmp_path, GPT(TINY), mlp="swiglu")
        what = ".*ckpt_000001.pt holds a configuration this code can't build: mlp must be"
    else:
        out = save_model(tmp_path, GPT(TINY), n_embd=64)
        what = "the weights in .*ckpt_000001.pt don't fit its configuration: .*size mismatch"
    with pytest.raises(SystemExit, match=f"^error: {what}") as e:
        generate.main(["--checkpoint", out, "--device", "cpu", "--max-new-tokens", "2"])
    assert "\n" not in str(e.value)


def test_prompt_may_fill_the_context(tmp_path):
    """A prompt as long as the context is continued (the sampler then crops it); one token more is refused."""
    out = save_model(tmp_path, GPT(TINY))
    fill = "a" + " a" * (TINY.block_size - 1)
    assert len(get_encoding().encode_ordinary(fill)) == TINY.block_size
    flags = ["--checkpoint", out, "--device", "cpu", "--num-samples", "1", "--max-new-tokens", "3", "--no-stream"]
    [text] = generate.main([*flags, "--prompt", fill])
    assert text.startswith(fill) and text != fill
    with pytest.raises(SystemExit, match="^error: the prompt is 65 tokens, the model's context is 64$"):
        generate.main([*flags, "--prompt", fill + " a"])


@pytest.mark.slow
def test_closed_stdout_ends_quietly(tmp_path):
    """`generate.py ... | head -c 5`: a reader that stops early ends the sampling without a BrokenPipeError
    traceback, with exit status 1 (the output is incomplete), as Python's own advice for SIGPIPE does."""
    out = save_model(tmp_path, GPT(TINY))
    proc = subprocess.Popen([sys.executable, str(REPO / "generate.py"), "--checkpoint", out, "--device", "cpu",
                             "--num-samples", "1", "--max-new-tokens", "60"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    proc.stdout.close()  # the reader is gone before the first write: no race with how fast the tokens come
    stderr = proc.communicate(timeout=120)[1]
    assert "Traceback" not in stderr and proc.returncode == 1, (proc.returncode, stderr)


@pytest.mark.slow
def test_ctrl_c_ends_quietly(tmp_path):
    """Ctrl-C while a sample streams stops generate.py with exit status 130 and no KeyboardInterrupt traceback."""
    out = save_model(tmp_path, GPT(TINY))
    proc = subprocess.Popen([sys.executable, str(REPO / "generate.py"), "--checkpoint", out, "--device", "cpu",
                             "--num-samples", "1", "--max-new-tokens", "100000", "--prompt", "Hello"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    assert proc.stdout.read(6).startswith(b"Hello")  # the prompt, then the first token: it is sampling
    proc.send_signal(signal.SIGINT)
    stderr = proc.communicate(timeout=120)[1]
    assert proc.returncode == 130
    assert b"Traceback" not in stderr, stderr.decode()


@pytest.mark.slow
@pytest.mark.parametrize("samples", ["1", "2"], ids=["streamed", "at the end"])
def test_unencodable_output_is_replaced(tmp_path, samples):
    """Output to a terminal or file that can't encode a character (PYTHONIOENCODING=ascii here, cp1252 when a
    Windows console is redirected) prints "?" for it, not a UnicodeEncodeError traceback."""
    out = save_model(tmp_path, GPT(TINY))
    proc = subprocess.run([sys.executable, str(REPO / "generate.py"), "--checkpoint", out, "--device", "cpu",
                           "--num-samples", samples, "--max-new-tokens", "3", "--prompt", "café"],
                          capture_output=True, env={**os.environ, "PYTHONIOENCODING": "ascii"}, timeout=120)
    assert proc.returncode == 0, proc.stderr.decode()
    assert b"caf?" in proc.stdout


class Scripted(torch.nn.Module):
    """Stands in for the GPT in sampling: it streams fixed token ids, whatever the prompt and the seed."""

    def __init__(self, ids: list[int]):
        super().__init__()
        self.ids = ids

    def stream(self, idx, max_new_tokens, **kw):
        for i in self.ids[:max_new_tokens]:
            yield torch.tensor([[i]])


class Writes(io.StringIO):
    """A stdout that keeps each write apart."""

    def __init__(self):
        super().__init__()
        self.writes = []

    def write(self, s: str) -> int:
        self.writes.append(s)
        return super().write(s)


def test_stream_sample_splits_utf8_safely():
    """A character whose bytes span two tokens is printed once, whole, in one write; never a replacement mark."""
    enc = get_encoding()
    text = " naïve café — 日本語 🙂"
    ids = enc.encode_ordinary(text)
    pieces = [enc.decode_single_token_bytes(i) for i in ids]
    split = [p for p in pieces if not _is_utf8(p)]
    assert len(split) >= 2  # some tokens end or start inside a character
    out = Writes()
    got = generate.stream_sample(Scripted(ids), enc, "Hello", len(ids), top_k=None, top_p=None, seed=0,
                                 device="cpu", dtype=torch.float32, out=out)
    assert got == "Hello" + text and out.getvalue() == "Hello" + text + "\n"
    assert not any("\ufffd" in w for w in out.writes)
    for char in "ïé—日本語🙂":
        assert sum(char in w for w in out.writes) == 1, char  # printed in one piece, once


def _is_utf8(b: bytes) -> bool:
    try:
        b.decode("utf-8")
        return True
    except UnicodeDecodeError:
        return False


@pytest.mark.parametrize("flags,message", [
    (["--top-p", "0"], "--top-p must be in (0, 1]"),
    (["--top-p", "1.5"], "--top-p must be in (0, 1]"),
    (["--temperature", "0"], "--temperature must be positive"),
    (["--temperature", "nan"], "--temperature must be positive"),
    (["--temperature", "inf"], "--temperature must be positive and finite"),  # drew ids 0-49, whatever the model
    (["--seed", str(2**64)], "--seed must fit in 64 bits"),  # was torch's ValueError traceback
    (["--top-k", "-1"], "--top-k can't be negative"),
    (["--model", "gpt2", "--checkpoint", "run1"], "not allowed with argument"),
])
def test_bad_flags(flags, message, capsys):
    """Bad flags stop with argparse's one-line usage error naming the flag."""
    with pytest.raises(SystemExit) as e:
        generate.parse_args(flags)
    assert e.value.code == 2
    assert message in capsys.readouterr().err


def test_unreachable_model_is_one_line(hub_offline):
    """--model without network access (and no cached copy) is one line of error, not a traceback."""
    with pytest.raises(SystemExit) as e:
        generate.main(["--model", "gpt2", "--device", "cpu"])
    msg = str(e.value.code)
    assert msg.startswith("error: cannot load --model gpt2") and "\n" not in msg


def test_cut_short_weights_file_is_one_line(tmp_path):
    """--model DIR whose model.safetensors was cut short (a copy stopped half-way): one line, not safetensors'
    SafetensorError traceback."""
    import transformers
    hf = transformers.GPT2LMHeadModel(transformers.GPT2Config(vocab_size=512, n_positions=16, n_embd=16, n_layer=1,
                                                              n_head=2))
    hf.save_pretrained(tmp_path)
    weights = tmp_path / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:1000])
    with pytest.raises(SystemExit, match="^error: cannot load --model .*: the weights file of .* is damaged") as e:
        generate.main(["--model", str(tmp_path), "--device", "cpu"])
    assert "\n" not in str(e.value)

def test_model_given_a_checkpoint_file_points_to_checkpoint(tmp_path):
    """--model a file (a checkpoint of ours given to the wrong flag): one line saying what --model takes and
    that a checkpoint goes to --checkpoint, in generate.py and hellaswag.py alike."""
    path = tmp_path / "ckpt_000040.pt"
    path.write_bytes(b"PK\x03\x04")
    with pytest.raises(SystemExit) as e:
        generate.main(["--model", str(path), "--device", "cpu"])
    assert str(e.value) == (f"error: cannot load --model {path}: {path} is a file, not a GPT-2 name (gpt2, gpt2-medium, "
                            "gpt2-large, gpt2-xl) or a Hugging Face GPT-2 folder (a checkpoint of train_gpt.py: --checkpoint)")
    import hellaswag
    with pytest.raises(hellaswag.HellaSwagError, match=r"is a file, .* \(a checkpoint of train_gpt.py: --checkpoint\)$"):
        hellaswag.load_pretrained(str(path))


# -----------------------------------------------------------------------------
# generate.py's sampling flags reach the sampler


PROMPT = "The cat sat on"


def sampled_model(tmp_path) -> tuple[GPT, str]:
    """A random model of GPT-2's vocabulary with spread-out predictions, and an out dir holding it."""
    model = random_model(TINY, seed=4, scale=0.3)
    return model, save_model(tmp_path, model)


def run_generate(out: str, samples: str, *flags: str) -> list[str]:
    """generate.main on out's checkpoint, on CPU, 12 new tokens after PROMPT, seed 42 (its default)."""
    return generate.main(["--checkpoint", out, "--device", "cpu", "--prompt", PROMPT, "--num-samples", samples,
                          "--max-new-tokens", "12", *flags])


def greedy(model: GPT, n: int) -> str:
    """PROMPT continued by the likeliest token (of GPT-2's, not the padding) n times, by full forward passes."""
    enc = get_encoding()
    idx = torch.tensor([enc.encode_ordinary(PROMPT)])
    with torch.no_grad():
        for _ in range(n):
            logits, _ = model(idx)
            idx = torch.cat([idx, logits[:, -1, :enc.n_vocab].argmax(dim=-1, keepdim=True)], dim=1)
    return enc.decode(idx[0].tolist())


def seeded(model: GPT, n: int, samples: int, **kw) -> list[str]:
    """samples continuations of PROMPT by n tokens that model.generate draws from seed 42 with kw."""
    enc = get_encoding()
    idx = torch.tensor([enc.encode_ordinary(PROMPT)] * samples)
    out = model.eval().generate(idx, n, n_vocab=enc.n_vocab, generator=torch.Generator().manual_seed(42), **kw)
    return [enc.decode(row.tolist()) for row in out]


SAMPLES = pytest.mark.parametrize("samples", ["1", "2"], ids=["streamed", "at the end"])


@SAMPLES
def test_top_k_1_is_greedy(tmp_path, samples):
    """generate.py --top-k 1 continues the prompt with the likeliest token each time (every sample the same),
    where its default top-k of 50 draws other tokens."""
    model, out = sampled_model(tmp_path)
    want = greedy(model, 12)
    assert run_generate(out, samples, "--top-k", "1") == [want] * int(samples)
    assert want not in run_generate(out, samples)  # the default samples: the flag is what made them greedy


@SAMPLES
def test_top_p_reaches_the_sampler(tmp_path, samples):
    """generate.py --top-p 1e-9 (with --top-k 0: no top-k) keeps only the likeliest token: greedy decoding; and
    --top-p 0.9 draws what the model's generate draws with top_p=0.9 from the same seed."""
    model, out = sampled_model(tmp_path)
    assert run_generate(out, samples, "--top-k", "0", "--top-p", "1e-9") == [greedy(model, 12)] * int(samples)
    got = run_generate(out, samples, "--top-k", "0", "--top-p", "0.9")
    assert got == seeded(model, 12, int(samples), top_p=0.9)
    assert got != seeded(model, 12, int(samples))  # top_p changes the draws here


@SAMPLES
def test_temperature_reaches_the_sampler(tmp_path, samples):
    """generate.py --temperature 0.5 draws what the model's generate draws at temperature 0.5 (with the default
    top-k of 50) from the same seed, which is not what it draws at temperature 1."""
    model, out = sampled_model(tmp_path)
    got = run_generate(out, samples, "--temperature", "0.5")
    assert got == seeded(model, 12, int(samples), top_k=50, temperature=0.5)
    assert got != seeded(model, 12, int(samples), top_k=50)
