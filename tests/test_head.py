"""python -m pytest tests/test_head.py -v

The output head and its loss a chunk at a time (model.head_loss, HeadLoss): the same loss and gradients as
F.cross_entropy of the full logits, with and without the soft-cap, under autocast and torch.compile, and
nothing of size positions x vocab kept for the backward pass.
"""

from dataclasses import replace

import pytest
import torch
from torch.nn import functional as F

import model as M
from conftest import MODERN, TINY
from model import GPT, head_logits, head_loss, head_losses, softcap

V, C = 1000, 32


def plain_loss(h, weight, targets, cap):
    return F.cross_entropy(softcap(h @ weight.t(), cap).float(), targets)


def data(n, seed=0):
    g = torch.Generator().manual_seed(seed)
    h = torch.randn(n, C, generator=g)
    weight = torch.randn(V, C, generator=g) * 0.5
    targets = torch.randint(0, V, (n,), generator=g)
    return h, weight, targets


def loss_and_grads(fn, h, weight, targets, cap, scale=1.0):
    h, weight = h.clone().requires_grad_(), weight.clone().requires_grad_()
    loss = fn(h, weight, targets, cap)
    (loss * scale).backward()
    return loss.detach(), h.grad, weight.grad


def assert_rel_close(a, b, tol):
    """max |a - b| within tol of max |b|: the gradients of a mean loss are tiny, an absolute bound says nothing."""
    assert (a - b).abs().max().item() <= tol * b.abs().max().item(), (a - b).abs().max().item()


@pytest.mark.parametrize("rows", [7, 256, "fused"], ids=["short row groups", "whole chunks", "fused"])
@pytest.mark.parametrize("cap", [0.0, 3.0])
@pytest.mark.parametrize("n", [1, 100, 600])  # within one chunk, and over several with a short last one
def test_equals_plain_cross_entropy_in_float32(monkeypatch, cap, n, rows):
    """Both of the head's formulas: a CPU's one softmax of a few rows (in groups of 7, so that every chunk ends
    in a short one, or whole chunks) and the fused log-softmax and softmax of a compiled step or a GPU."""
    monkeypatch.setattr(M, "HEAD_CHUNK", 256)
    if rows == "fused":
        monkeypatch.setattr(M, "softmax_in_rows", lambda device: False)
    else:
        monkeypatch.setattr(M, "SOFTMAX_ROWS", rows)
    h, weight, targets = data(n)
    ours = loss_and_grads(head_loss, h, weight, targets, cap)
    ref = loss_and_grads(plain_loss, h, weight, targets, cap)
    assert abs(ours[0].item() - ref[0].item()) <= 1e-5 * ref[0].item()
    assert_rel_close(ours[1], ref[1], 1e-5)
    assert_rel_close(ours[2], ref[2], 1e-5)


def test_bfloat16_head_weight_is_the_cast_weight_laid_out_transposed():
    """On a CPU the head's bfloat16 weight is stored transposed, written by a matmul with the identity: exactly
    the values of the cast, the largest and smallest too. Float32 keeps the weight's own layout."""
    _, weight, _ = data(1)
    weight[0, :4] = torch.tensor([-0.0, 3e38, -1e-30, 1 + 2 ** -7])
    got = M.head_weight(weight, torch.bfloat16)
    assert got.shape == weight.shape and got.t().is_contiguous()
    assert torch.equal(got, weight.to(torch.bfloat16))
    assert M.head_weight(weight, torch.float32).is_contiguous()


@pytest.mark.parametrize("fused", [False, True], ids=["in rows", "fused"])
@pytest.mark.parametrize("cap", [0.0, 3.0])
def test_bfloat16_logits_give_float32_losses_and_one_rounding_of_the_gradient(monkeypatch, cap, fused):
    """With bfloat16 logits (autocast), each loss is the float32 cross-entropy of those very logits, and their
    gradient is float32's softmax - one_hot, times the cap's derivative, rounded to bfloat16 once."""
    monkeypatch.setattr(M, "HEAD_CHUNK", 64)
    monkeypatch.setattr(M, "SOFTMAX_ROWS", 7)
    if fused:
        monkeypatch.setattr(M, "softmax_in_rows", lambda device: False)
    h, weight, targets = data(150)
    chunks = M.HeadChunks(h, weight, targets, cap, torch.bfloat16, grad=True)
    for i, x, g, losses in chunks:
        y = targets[i:i + len(x)]
        z = torch.mm(x, chunks.w.t()).float()  # the chunk's bfloat16 logits
        s = softcap(z, cap)
        torch.testing.assert_close(losses, F.cross_entropy(s, y, reduction="none"), rtol=1e-5, atol=1e-5)
        want = torch.softmax(s, 1) - F.one_hot(y, V)
        if cap:
            want = want * (1 - torch.tanh(z / cap) ** 2)
        torch.testing.assert_close(g.float(), want.to(torch.bfloat16).float(), rtol=2 ** -7, atol=1e-9)


@pytest.mark.parametrize("grad", [False, True])
@pytest.mark.parametrize("cap", [0.0, 30.0])
def test_a_target_too_unlikely_for_float32_probabilities(grad, cap):
    """A target whose float32 softmax probability underflows to 0 (a loss of several hundred) gets the log-softmax's
    loss, not the infinity of log 0, and the gradients stay those of the plain head. Under the cap of 30 a
    loss can't pass ~67, where the same fallback runs on the capped logits."""
    h, weight, targets = data(40)
    h[5] = (weight[(targets[5] + 1) % V] - weight[targets[5]]) * 40  # another token's logit far above the target's
    ref = F.cross_entropy(softcap(h @ weight.t(), cap), targets, reduction="none")
    assert ref[5] > (200 if not cap else 60)
    if grad:
        ours = loss_and_grads(head_loss, h, weight, targets, cap)
        want = loss_and_grads(plain_loss, h, weight, targets, cap)
        torch.testing.assert_close(ours[0], want[0], rtol=1e-5, atol=0)
        assert_rel_close(ours[1], want[1], 1e-5)
        assert_rel_close(ours[2], want[2], 1e-5)
    else:
        torch.testing.assert_close(head_losses(h, weight, targets, cap), ref, rtol=1e-5, atol=1e-5)


def test_no_positions_give_the_plain_heads_nan_and_zero_gradients():
    """With no positions, head_loss gives what the plain head does, a nan loss and zero gradients, instead of
    failing on no chunks; head_losses gives no losses, and the loss without gradients is nan too."""
    h, weight, targets = data(0)
    ours = loss_and_grads(head_loss, h, weight, targets, 0.0)
    ref = loss_and_grads(plain_loss, h, weight, targets, 0.0)
    for a, b in zip(ours, ref):
        torch.testing.assert_close(a, b, equal_nan=True)
    assert head_losses(h, weight, targets).shape == (0,)
    with torch.no_grad():
        assert head_loss(h, weight, targets).isnan()


@pytest.mark.parametrize("cap", [0.0, 3.0])
def test_ignored_targets_count_for_nothing_as_in_cross_entropy(cap):
    """Targets of -100 (padding) are F.cross_entropy's ignore_index: no loss, no gradient, out of the mean."""
    h, weight, targets = data(600)
    targets[::3] = -100
    ours, ref = (loss_and_grads(f, h, weight, targets, cap) for f in (head_loss, plain_loss))
    torch.testing.assert_close(ours[0], ref[0])
    assert_rel_close(ours[1], ref[1], 1e-5)
    assert_rel_close(ours[2], ref[2], 1e-5)
    rows = F.cross_entropy(softcap(h @ weight.t(), cap), targets, reduction="none")
    torch.testing.assert_close(head_losses(h, weight, targets, cap), rows, rtol=1e-5, atol=1e-5)
    with torch.no_grad():
        torch.testing.assert_close(head_loss(h, weight, targets, cap), ref[0], rtol=1e-5, atol=1e-6)
        assert GPT(TINY)(targets[None, :5].abs(), targets[None, :5])[1].isfinite()  # the model's loss too


def test_backward_scales_by_the_incoming_gradient():
    """loss * 3 has three times the gradients: backward uses the gradient it is given, not 1."""
    h, weight, targets = data(300)
    one = loss_and_grads(head_loss, h, weight, targets, 0.0)
    three = loss_and_grads(head_loss, h, weight, targets, 0.0, scale=3.0)
    assert_rel_close(three[1], 3 * one[1], 1e-6)
    assert_rel_close(three[2], 3 * one[2], 1e-6)


def test_without_gradients_each_row_loss():
    """Without gradients, head_losses gives each position's soft-capped cross-entropy (HellaSwag scores endings
    with it) and head_loss their mean, over two chunks, as F.cross_entropy of the full logits does."""
    h, weight, targets = data(600)
    ref = F.cross_entropy(softcap(h @ weight.t(), 3.0), targets, reduction="none")
    torch.testing.assert_close(head_losses(h, weight, targets, 3.0), ref, rtol=1e-5, atol=1e-5)
    with torch.no_grad():
        torch.testing.assert_close(head_loss(h, weight, targets, 3.0), ref.mean(), rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_without_gradients_pads_the_positions_in_bfloat16_only(monkeypatch, dtype):
    """Under bfloat16 autocast the chunks' matmuls see a multiple of HEAD_CHUNK positions (one plan per shape
    in the matmul library); in float32 the positions go unpadded. Either way, one loss per position."""
    monkeypatch.setattr(M, "HEAD_CHUNK", 64)
    seen = []
    real_chunks = M.HeadChunks

    def chunks(h, *args, **kwargs):
        seen.append(len(h))
        return real_chunks(h, *args, **kwargs)

    monkeypatch.setattr(M, "HeadChunks", chunks)
    h, weight, targets = data(150)
    with torch.autocast("cpu", torch.bfloat16, enabled=dtype == torch.bfloat16):
        losses = head_losses(h, weight, targets)
    assert seen == [192 if dtype == torch.bfloat16 else 150]
    ref = F.cross_entropy(h @ weight.t(), targets, reduction="none")
    torch.testing.assert_close(losses, ref, rtol=1e-5 if dtype == torch.float32 else 2e-2, atol=1e-5)


def test_head_logits_are_the_plain_logits():
    """In float32, head_logits (sampling's logits, computed as W h^T) equals the soft-capped h W^T: the faster
    order changes the speed only."""
    h, weight, _ = data(5)
    torch.testing.assert_close(head_logits(h, weight, 3.0), softcap(h @ weight.t(), 3.0), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("amx", [False, True], ids=["avx512-bf16", "amx"])
def test_head_logits_under_bfloat16_autocast_are_its_logits(amx, monkeypatch):
    """Under autocast (sampling in bfloat16) the head runs in bfloat16: as h W^T, not as float32's W h^T,
    except on a CPU with AMX, where W h^T is the faster order there too. Either way the plain product in
    that order under the same autocast, returned in float32, within bfloat16's rounding of float32's."""
    monkeypatch.setattr(M, "has_amx", lambda device: amx)
    h, weight, _ = data(4)
    calls = []
    mm = torch.mm
    monkeypatch.setattr(torch, "mm", lambda *a, **k: calls.append(a) or mm(*a, **k))
    head_logits(h, weight)
    assert len(calls) == 1  # float32: W h^T
    with torch.autocast("cpu", torch.bfloat16):
        got = head_logits(h, weight, 3.0)
        want = mm(weight, h.t()).t() if amx else F.linear(h, weight)
    assert len(calls) == (2 if amx else 1)  # W h^T in bfloat16 only with AMX
    assert got.dtype == torch.float32 and torch.equal(got, softcap(want.float(), 3.0))
    torch.testing.assert_close(got, softcap(h @ weight.t(), 3.0), rtol=0.02, atol=0.05)


@pytest.mark.parametrize("config", [TINY, replace(TINY, **MODERN)], ids=["gpt2", "modern"])
def test_model_loss_and_every_gradient_equal_the_plain_head(config):
    """Through the whole model (tied embedding, and the modern recipe's soft-cap): the chunked loss and
    every parameter's gradient are those of the full logits' cross-entropy."""
    torch.manual_seed(0)
    model = GPT(config)
    idx = torch.randint(0, 50257, (10, 60))  # 600 positions: several chunks
    targets = torch.randint(0, 50257, (10, 60))

    def grads(loss):
        model.zero_grad()
        loss.backward()
        return loss.item(), {n: p.grad.clone() for n, p in model.named_parameters()}

    ours = grads(model(idx, targets)[1])
    logits, _ = model(idx)
    ref = grads(F.cross_entropy(logits.float().flatten(0, 1), targets.flatten()))
    assert abs(ours[0] - ref[0]) <= 1e-5 * ref[0]
    for name, g in ref[1].items():
        assert_rel_close(ours[1][name], g, 1e-5)


def test_nothing_of_vocab_size_per_position_is_saved_for_backward():
    """The point of the chunks: no tensor of positions x vocab survives the forward pass."""
    torch.manual_seed(0)
    model = GPT(TINY)
    B, T = 16, 64
    idx = torch.randint(0, 50257, (B, T))
    biggest = []
    with torch.autograd.graph.saved_tensors_hooks(lambda t: biggest.append(t.numel()) or t, lambda t: t):
        logits, loss = model(idx, idx)
    assert logits is None
    assert max(biggest) < B * T * TINY.vocab_size / 4
    loss.backward()


@pytest.mark.parametrize("cap", [0.0, 3.0])
def test_autocast_bfloat16_close_to_the_plain_head(monkeypatch, cap):
    """Under bfloat16 autocast, with and without the soft-cap, head_loss over two chunks is within 1% of the plain
    head's loss under the same autocast and its gradients within 2%, and the gradients stay float32."""
    monkeypatch.setattr(M, "HEAD_CHUNK", 256)  # bfloat16 chunks of 512: two
    h, weight, targets = data(600)
    with torch.autocast("cpu", torch.bfloat16):
        ours = loss_and_grads(head_loss, h, weight, targets, cap)
        ref = loss_and_grads(plain_loss, h, weight, targets, cap)
    assert ours[1].dtype == torch.float32 and ours[2].dtype == torch.float32
    assert abs(ours[0].item() - ref[0].item()) <= 1e-2 * ref[0].item()
    assert_rel_close(ours[1], ref[1], 2e-2)
    assert_rel_close(ours[2], ref[2], 2e-2)


def test_bfloat16_weight_gradient_is_the_float32_sum_of_each_chunks_product(monkeypatch):
    """A bfloat16 chunk holds twice float32's positions (as many bytes of logits), and the weight's gradient
    sums the chunks' bfloat16 products in float32, each rounded once: no bfloat16 running sum."""
    monkeypatch.setattr(M, "HEAD_CHUNK", 64)
    h, weight, targets = data(300)
    chunks = M.HeadChunks(h, weight, targets, 0.0, torch.bfloat16, grad=True)
    products = [torch.mm(g.t(), x) for _, x, g, _ in chunks]  # (vocab, C) bfloat16 each
    assert [len(x) for _, x, _, _ in chunks] == [128, 128, 44]
    with torch.autocast("cpu", torch.bfloat16):
        grad_w = loss_and_grads(head_loss, h, weight, targets, 0.0)[2]
    torch.testing.assert_close(grad_w, sum(p.float() for p in products) / 300, rtol=1e-6, atol=0)


@pytest.mark.slow
@pytest.mark.parametrize("cap", [0.0, 3.0])
def test_compiles_to_the_same_loss_and_gradients(cap):
    """torch.compile traces through HeadLoss (a whole chunk's softmax at a time, where eager takes a few rows
    at a time): its loss and gradients are eager's."""
    h, weight, targets = data(600)
    compiled = torch.compile(head_loss)
    ours = loss_and_grads(compiled, h, weight, targets, cap)
    ref = loss_and_grads(head_loss, h, weight, targets, cap)
    assert abs(ours[0].item() - ref[0].item()) <= 1e-5 * ref[0].item()
    assert_rel_close(ours[1], ref[1], 1e-5)
    assert_rel_close(ours[2], ref[2], 1e-5)
