"""python -m pytest tests/test_model.py -v

model.py on its own: shapes, the loss at init, causality, tied weights, parameter counts, initialisation,
config errors, attention against attention written out by hand and against SDPA. Parity with Hugging Face's GPT-2 is in
test_hf.py, sampling in test_generate.py.
"""

import math

import pytest
import torch
from torch.nn import functional as F

from conftest import TINY
import model
from model import GPT, CausalAttention, CausalSelfAttention, GPTConfig, Linear, Rotary, causal_attention
from train_gpt import PRESETS, model_config


def test_output_shapes():
    """Without targets forward gives (B, T, vocab) logits and no loss; with targets, a scalar loss and no logits."""
    model = GPT(TINY)
    idx = torch.randint(0, 50257, (3, 17))
    logits, loss = model(idx)
    assert logits.shape == (3, 17, TINY.vocab_size) and loss is None
    logits, loss = model(idx, idx)
    assert logits is None and loss.shape == ()


def test_loss_at_init_is_uniform():
    """At initialisation the model is ~uniform over the vocabulary: loss ~ ln(50304)."""
    model = GPT(TINY)
    idx = torch.randint(0, 50257, (2, 64))
    targets = torch.randint(0, 50257, (2, 64))
    _, loss = model(idx, targets)
    assert abs(loss.item() - math.log(50304)) < 0.2


def test_causal():
    """Changing token t+1 leaves the logits of positions 0..t unchanged, and changes t+1's."""
    model = GPT(TINY).eval()
    idx = torch.randint(0, 50257, (1, 32))
    t = 20
    edited = idx.clone()
    edited[0, t + 1] = (idx[0, t + 1] + 1) % 50257
    a, _ = model(idx)
    b, _ = model(edited)
    torch.testing.assert_close(a[:, :t + 1], b[:, :t + 1], rtol=0, atol=0)
    assert not torch.allclose(a[:, t + 1], b[:, t + 1])


def test_tied_weights_are_one_tensor():
    """The output head and the token embedding share one tensor (and one gradient)."""
    model = GPT(TINY)
    assert model.lm_head.weight is model.transformer.wte.weight


@pytest.mark.parametrize("name,count", [("gpt2", 124_475_904), ("seed", 16_299_520), ("tiny", 1_637_248)])
def test_param_counts(name, count):
    """Each preset has its known parameter count (tied head counted once)."""
    with torch.device("meta"):  # shapes without storage: gpt2's 124M weights need no memory or init
        assert GPT(model_config(PRESETS[name])).num_params() == count


def test_gpt2_124m_count_at_original_vocab():
    """At GPT-2's own vocabulary of 50,257 the gpt2 preset is OpenAI's 124,439,808 parameters."""
    with torch.device("meta"):
        assert GPT(GPTConfig(vocab_size=50257)).num_params() == 124_439_808


def test_residual_projections_scaled_at_init():
    """c_proj weights start with std 0.02/sqrt(2 n_layer); other matrices with 0.02."""
    model = GPT(GPTConfig(n_layer=4, n_head=8, n_embd=256))  # the seed preset's size: matrices of 256k entries
    want = 0.02 / math.sqrt(2 * 4)
    assert abs(model.transformer.h[0].mlp.c_proj.weight.std().item() - want) < 0.05 * want
    assert abs(model.transformer.h[0].attn.c_proj.weight.std().item() - want) < 0.05 * want
    assert abs(model.transformer.h[0].mlp.c_fc.weight.std().item() - 0.02) < 0.001
    assert model.transformer.h[0].attn.c_attn.bias.abs().max().item() == 0


def test_bad_config_is_refused():
    """n_embd not divisible by n_head, or a sequence longer than the context, raise a clear ValueError."""
    with pytest.raises(ValueError, match="divisible"):
        GPTConfig(n_embd=30, n_head=4)
    with pytest.raises(ValueError, match="longer than the context"):
        GPT(TINY)(torch.zeros(1, TINY.block_size + 1, dtype=torch.long))


def test_shape_mistakes_are_value_errors():
    """A sequence without its batch dimension, or targets of another shape than idx, are a clear ValueError."""
    model = GPT(TINY)
    idx = torch.zeros(2, 8, dtype=torch.long)
    with pytest.raises(ValueError, match=r"shape \(B, T\), got shape \(8,\)"):
        model(idx[0])
    with pytest.raises(ValueError, match="targets must have the shape of idx"):
        model(idx, idx[:, :4])


def test_loss_of_a_model_on_meta():
    """A model on 'meta' (shapes only, e.g. to count FLOPs) gives its loss's shape, as it gives its logits'."""
    with torch.device("meta"):
        model = GPT(TINY)
        idx = torch.zeros(2, 8, dtype=torch.long)
    _, loss = model(idx, idx)
    assert loss.shape == () and loss.device.type == "meta"


def test_generate_top1_is_greedy():
    """top_k=1 sampling picks the argmax at every step, and adds exactly max_new_tokens."""
    model = GPT(TINY).eval()
    idx = torch.randint(0, 50257, (2, 5))
    out = model.generate(idx, 7, top_k=1)
    assert out.shape == (2, 12)
    greedy = idx
    for _ in range(7):
        nxt = model(greedy)[0][:, -1].argmax(-1, keepdim=True)
        greedy = torch.cat([greedy, nxt], 1)
    assert torch.equal(out, greedy)


def test_generate_never_samples_padding_ids():
    """With n_vocab given, ids of the padded vocabulary are never drawn, even when most likely."""
    model = GPT(TINY).eval()
    with torch.no_grad():
        model.lm_head.weight[50257:] *= 100  # make the padding ids the most likely by far
    out = model.generate(torch.zeros(4, 1, dtype=torch.long), 20, top_k=5, n_vocab=50257)
    assert out.max().item() < 50257


def attention_by_hand(attn: CausalSelfAttention, x: torch.Tensor, qk_norm: bool, rope: bool) -> torch.Tensor:
    """Causal self-attention spelled out: softmax(q k^T / sqrt(hs), the future masked) v, per head."""
    B, T, C = x.shape
    nh = attn.n_head
    hs = C // nh
    q, k, v = (x @ attn.c_attn.weight.T + attn.c_attn.bias).split(C, dim=2)  # each (B, T, C)
    q, k, v = (t.reshape(B, T, nh, hs).permute(0, 2, 1, 3) for t in (q, k, v))  # (B, nh, T, hs)
    if qk_norm:  # each head's query and key scaled to unit root mean square
        eps = torch.finfo(x.dtype).eps
        q, k = (t / torch.sqrt((t * t).mean(-1, keepdim=True) + eps) for t in (q, k))
    if rope:  # channel i and i + hs/2 of position t: a rotation by angle t / 10000^(2i / hs)
        i = torch.arange(hs // 2, dtype=torch.float32)
        angle = torch.arange(T, dtype=torch.float32)[:, None] / 10000 ** (2 * i / hs)  # (T, hs/2)
        cos, sin = angle.cos(), angle.sin()

        def rotate(t):
            a, b = t[..., :hs // 2], t[..., hs // 2:]
            return torch.cat([a * cos - b * sin, a * sin + b * cos], dim=-1)
        q, k = rotate(q), rotate(k)
    scores = q @ k.transpose(-2, -1) / math.sqrt(hs)  # (B, nh, T, T)
    future = torch.ones(T, T, dtype=torch.bool).triu(diagonal=1)
    weights = torch.softmax(scores.masked_fill(future, float("-inf")), dim=-1)
    y = (weights @ v).permute(0, 2, 1, 3).reshape(B, T, C)  # heads side by side again
    return y @ attn.c_proj.weight.T + attn.c_proj.bias


@pytest.mark.parametrize("qk_norm,rope", [(False, False), (True, False), (False, True), (True, True)],
                         ids=["gpt2", "qk_norm", "rope", "qk_norm+rope"])
def test_attention_equals_attention_by_hand(qk_norm, rope):
    """CausalSelfAttention (fused scaled_dot_product_attention) equals attention written out by hand, in
    float32: GPT-2's, with QK-norm, with rotary positions, and with both."""
    config = GPTConfig(**{**vars(TINY), "n_head": 4, "qk_norm": qk_norm, "rope": rope})
    attn = CausalSelfAttention(config)
    with torch.no_grad():
        for p in attn.parameters():  # biases start at zero: move them, or a mix-up of them goes unseen
            p.normal_(0, 0.3)
    x = torch.randn(3, 20, config.n_embd)
    rotary = Rotary(config.n_embd // config.n_head)(torch.arange(20)) if rope else None
    with torch.no_grad():
        got = attn(x, rotary=rotary)
        want = attention_by_hand(attn, x, qk_norm, rope)
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)


def qkv(B, nh, T, hs, dtype=torch.float32):
    torch.manual_seed(0)
    return [torch.randn(B, nh, T, hs, dtype=dtype, requires_grad=True) for _ in range(3)]


@pytest.mark.parametrize("T,rows", [(1, 256), (17, 256), (64, 256), (17, 8), (64, 16)],
                         ids=["1 query", "17 queries", "64 queries", "17 in blocks of 8", "64 in blocks of 16"])
def test_causal_attention_equals_sdpa(T, rows, monkeypatch):
    """CausalAttention (matmuls around a softmax, a block of queries at a time, and its own backward) gives
    SDPA's causal output and gradients in float32, within 1e-5, in one block of queries and in several
    (the last one short); its backward passes gradcheck in float64."""
    monkeypatch.setattr(model, "ATTN_ROWS", rows)
    q, k, v = qkv(2, 4, T, 16)
    dy = torch.randn(2, 4, T, 16)
    got = CausalAttention.apply(q, k, v)
    want = F.scaled_dot_product_attention(q, k, v, is_causal=True)
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)
    for g, w in zip(torch.autograd.grad(got, (q, k, v), dy), torch.autograd.grad(want, (q, k, v), dy)):
        torch.testing.assert_close(g, w, rtol=1e-5, atol=1e-5)
    assert torch.autograd.gradcheck(CausalAttention.apply, qkv(1, 2, min(T, 9), 4, torch.float64))


@pytest.mark.parametrize("rows", [256, 16], ids=["one block", "4 blocks"])
def test_causal_attention_in_bfloat16_on_a_cpu(rows, monkeypatch):
    """Under bfloat16 autocast on a CPU causal_attention takes CausalAttention, whose output and gradients
    stay within a few bfloat16 roundings of float32's; in float32 it is SDPA, bit for bit."""
    monkeypatch.setattr(model, "ATTN_ROWS", rows)
    q, k, v = qkv(2, 4, 64, 32)
    dy = torch.randn(2, 4, 64, 32)
    want = F.scaled_dot_product_attention(q, k, v, is_causal=True)
    want_grads = torch.autograd.grad(want, (q, k, v), dy)
    got = causal_attention(q, k, v)
    assert "CausalAttention" not in type(got.grad_fn).__name__ and torch.equal(got, want)
    with torch.autocast("cpu", torch.bfloat16):
        got = causal_attention(q, k, v)
    assert "CausalAttention" in type(got.grad_fn).__name__ and got.dtype == torch.bfloat16
    eps = torch.finfo(torch.bfloat16).eps
    for g, w in zip((got, *torch.autograd.grad(got, (q, k, v), dy)), (want, *want_grads)):
        assert (g.float() - w).abs().max() <= 3 * eps * w.abs().max()


def test_model_attention_in_bfloat16_on_a_cpu(monkeypatch):
    """The model's attention layers take CausalAttention under bfloat16 autocast on a CPU, once a layer, with
    QK-norm too (its float32 queries meet bfloat16 keys and values), and never in float32; the bfloat16
    loss follows float32's and every gradient comes back finite."""
    calls = []
    apply = CausalAttention.apply
    monkeypatch.setattr(CausalAttention, "apply", lambda *a: calls.append(a) or apply(*a))
    config = GPTConfig(**{**vars(TINY), "qk_norm": True})
    torch.manual_seed(0)
    gpt = GPT(config)
    idx = torch.randint(0, 50257, (2, 32))
    _, loss32 = gpt(idx, idx)
    assert calls == []
    with torch.autocast("cpu", torch.bfloat16):
        _, loss16 = gpt(idx, idx)
    assert len(calls) == config.n_layer
    loss16.backward()
    assert abs(loss16.item() - loss32.item()) < 0.05
    assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in gpt.parameters())


@pytest.mark.parametrize("amx", [False, True], ids=["no AMX", "AMX"])
@pytest.mark.parametrize("shape", [(1, 1, 48), (4, 1, 48), (2, 8, 48), (16, 48), (3, 17, 48)],
                         ids=["1 row", "4 rows", "16 rows", "16 rows, 2-d", "51 rows"])
def test_linear_equals_nn_linear(shape, amx, monkeypatch):
    """Linear (W x^T for 16 rows or fewer without AMX, x W^T for more or with AMX) gives nn.Linear's output,
    values and layout, and its gradients."""
    monkeypatch.setattr(model, "has_amx", lambda device: amx)
    torch.manual_seed(0)
    ours = Linear(48, 80)
    ref = torch.nn.Linear(48, 80)
    ref.load_state_dict(ours.state_dict())
    x = torch.randn(shape, requires_grad=True)
    calls = []
    addmm = torch.addmm
    monkeypatch.setattr(torch, "addmm", lambda *a, **k: calls.append(a) or addmm(*a, **k))
    got = ours(x)
    assert len(calls) == (0 if amx or x.numel() > 16 * 48 else 1)  # W x^T, or nn.Linear's own x W^T
    want = ref(x)
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)
    assert got.shape == want.shape and got.is_contiguous()
    grads = torch.autograd.grad(got.square().sum(), (x, ours.weight, ours.bias))
    ref_grads = torch.autograd.grad(want.square().sum(), (x, ref.weight, ref.bias))
    for g, r in zip(grads, ref_grads):
        torch.testing.assert_close(g, r, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("amx", [False, True], ids=["no AMX", "AMX"])
@pytest.mark.parametrize("shape", [(1, 1, 48), (4, 1, 48), (3, 17, 48)], ids=["1 row", "4 rows", "51 rows"])
def test_linear_under_bfloat16_autocast(shape, amx, monkeypatch):
    """Under bfloat16 autocast Linear runs a few rows in float32, bit for bit what it gives without autocast,
    and more rows as nn.Linear does: in bfloat16, bit for bit."""
    monkeypatch.setattr(model, "has_amx", lambda device: amx)
    torch.manual_seed(0)
    ours = Linear(48, 80)
    ref = torch.nn.Linear(48, 80)
    ref.load_state_dict(ours.state_dict())
    x = torch.randn(shape)
    with torch.no_grad():
        float32 = ours(x)
        with torch.autocast("cpu", torch.bfloat16):
            got, want = ours(x), ref(x)
    assert got.shape == want.shape and got.is_contiguous()
    if x.numel() <= 16 * 48:
        assert got.dtype == torch.float32 and torch.equal(got, float32)
    else:
        assert got.dtype == want.dtype == torch.bfloat16 and torch.equal(got, want)


@pytest.mark.parametrize("shape", [dict(n_layer=2, n_head=2, n_embd=32, block_size=64), dict(n_layer=4, n_head=8, n_embd=256),
                                   dict(n_layer=3, n_head=4, n_embd=64, rope=True, qk_norm=True, mlp="relu2",
                                        logit_softcap=15.0, vocab_size=1000)])
def test_config_counts_the_parameters_of_its_model(shape):
    """GPTConfig.num_params, counted from the shape alone (train_gpt.py checks a model fits in memory with it
    before building one), is what the model built from it has."""
    config = GPTConfig(**shape)
    with torch.device("meta"):  # shapes only: nothing allocated
        model = GPT(config)
    assert config.num_params() == model.num_params()
