"""python -m pytest tests/test_optim.py -v

The optimization numerics against references: Muon's momentum, Nesterov look-ahead, shape scaling and weight
decay over several steps against Keller Jordan's muon_update in float64; the AdamW half of MuonAdamW against
torch.optim.AdamW; the parameter groups of configure_optimizer; train_step's gradient accumulation and
clipping against one backward pass over the whole batch, and the learning rate it gives each group (Muon's
scaled by muon_lr / max_lr). Newton-Schulz against the SVD, Muon's first step, the schedules and exact resume
are in test_recipe.py, test_train.py and test_resilience.py.
"""

from dataclasses import replace

import pytest
import torch

import train_gpt
from conftest import TINY, random_model
from model import GPT
from optim import NS_COEFFICIENTS, MuonAdamW

# -----------------------------------------------------------------------------
# MuonAdamW against references


def newton_schulz_reference(G: torch.Tensor, steps: int = 5, eps: float = 1e-7) -> torch.Tensor:
    """zeropower_via_newtonschulz5 of github.com/KellerJordan/Muon, in float64."""
    a, b, c = NS_COEFFICIENTS
    X = G.double()
    if G.size(-2) > G.size(-1):
        X = X.mT
    X = X / (X.norm(dim=(-2, -1), keepdim=True) + eps)
    for _ in range(steps):
        A = X @ X.mT
        B = b * A + c * A @ A
        X = a * X + B @ X
    if G.size(-2) > G.size(-1):
        X = X.mT
    return X


def muon_reference(weights, grad_steps, split, lr, momentum, nesterov, weight_decay):
    """The weights after Keller Jordan's muon_update and step, one list of gradients per step; a weight
    of `split` k is k matrices stacked along its rows, each orthogonalised and scaled on its own."""
    weights = [w.double().clone() for w in weights]
    bufs = [torch.zeros_like(w) for w in weights]
    for grads in grad_steps:
        for w, buf, grad, k in zip(weights, bufs, grads, split):
            buf.lerp_(grad, 1 - momentum)
            update = grad.lerp(buf, momentum) if nesterov else buf
            rows, cols = w.size(0) // k, w.size(1)
            update = newton_schulz_reference(update.view(k, rows, cols)).reshape(w.shape)
            update = update * max(1, rows / cols) ** 0.5
            w.mul_(1 - lr * weight_decay).add_(update, alpha=-lr)
    return weights


@pytest.mark.parametrize("nesterov", [True, False])
def test_muon_steps_match_the_reference(nesterov):
    """Five Muon steps on wide, tall, square and split (3 tall matrices) weights, with weight decay, equal
    the reference's to 1e-12 in float64: the momentum and the Nesterov look-ahead (invisible in a first
    step, whose momentum is a multiple of the gradient) as well as the update's shape scaling."""
    g = torch.Generator().manual_seed(0)
    shapes, split = [(24, 8), (8, 24), (16, 16), (48, 8)], [1, 1, 1, 3]
    weights = [torch.randn(s, generator=g, dtype=torch.float64) for s in shapes]
    grad_steps = [[torch.randn(s, generator=g, dtype=torch.float64) for s in shapes] for _ in range(5)]
    params = [torch.nn.Parameter(w.clone()) for w in weights]
    opt = MuonAdamW([{"params": params[:3], "muon": True}, {"params": params[3:], "muon": True, "split": 3}],
                    lr=0.02, momentum=0.95, nesterov=nesterov, weight_decay=0.1, ns_dtype=torch.float64)
    for grads in grad_steps:
        for p, grad in zip(params, grads):
            p.grad = grad.clone()
        opt.step()
    want = muon_reference(weights, grad_steps, split, lr=0.02, momentum=0.95, nesterov=nesterov, weight_decay=0.1)
    for p, w in zip(params, want):
        torch.testing.assert_close(p.detach(), w, rtol=0, atol=1e-12)


def test_adamw_groups_match_torch_adamw():
    """MuonAdamW's AdamW groups take the steps of torch.optim.AdamW (bias correction, eps, decoupled weight
    decay per group) over 20 steps of a changing learning rate, to 1e-12 in float64."""
    g = torch.Generator().manual_seed(0)
    weights = [torch.randn(7, 5, generator=g, dtype=torch.float64), torch.randn(5, generator=g, dtype=torch.float64)]
    ours, theirs = ([torch.nn.Parameter(w.clone()) for w in weights] for _ in range(2))
    kw = dict(lr=1e-2, betas=(0.9, 0.95), eps=1e-8)
    opts = [MuonAdamW([{"params": ours[:1], "weight_decay": 0.1}, {"params": ours[1:]}], **kw),
            torch.optim.AdamW([{"params": theirs[:1], "weight_decay": 0.1},
                               {"params": theirs[1:], "weight_decay": 0.0}], foreach=False, **kw)]
    for step in range(20):
        grads = [torch.randn(w.shape, generator=g, dtype=torch.float64) for w in weights]
        for params, opt in zip((ours, theirs), opts):
            for p, grad in zip(params, grads):
                p.grad = grad.clone()
            for group in opt.param_groups:
                group["lr"] = 1e-2 * (step + 1) / 20
            opt.step()
    for a, b in zip(ours, theirs):
        torch.testing.assert_close(a.detach(), b.detach(), rtol=0, atol=1e-12)

# -----------------------------------------------------------------------------
# configure_optimizer


@pytest.mark.parametrize("recipe", ["gpt2", "modern"])
def test_param_groups_partition_the_model(recipe):
    """Every parameter is in exactly one group (the tied embedding / output head once), and weight decay is
    on the 2-D weights (embeddings included) only, not on biases and LayerNorm gains."""
    cfg = replace(train_gpt.apply_recipe(train_gpt.preset_config("tiny"), recipe), weight_decay=0.1)
    model = GPT(train_gpt.model_config(cfg))
    assert model.lm_head.weight is model.transformer.wte.weight
    opt = train_gpt.configure_optimizer(model, cfg, "cpu")
    name = {id(p): n for n, p in model.named_parameters()}  # the tied tensor once, as transformer.wte.weight
    grouped = [name[id(p)] for group in opt.param_groups for p in group["params"]]
    assert sorted(grouped) == sorted(name.values())
    assert sum(p.numel() for group in opt.param_groups for p in group["params"]) == model.num_params()
    decayed = {name[id(p)] for group in opt.param_groups if group["weight_decay"] for p in group["params"]}
    assert decayed == {n for n, p in model.named_parameters() if p.dim() == 2}
    assert "transformer.wte.weight" in decayed
    assert {group["weight_decay"] for group in opt.param_groups} == {0.0, 0.1}


def test_adamw_is_the_reference_runs():
    """--recipe gpt2 gets torch's AdamW with betas (0.9, 0.95), eps 1e-8 and --weight-decay on the decayed
    group, as the reference run (README)."""
    cfg = train_gpt.preset_config("tiny")
    opt = train_gpt.configure_optimizer(GPT(train_gpt.model_config(cfg)), cfg, "cpu")
    assert type(opt) is torch.optim.AdamW
    assert [(g["betas"], g["eps"], g["weight_decay"]) for g in opt.param_groups] == [((0.9, 0.95), 1e-8, 0.1),
                                                                                      ((0.9, 0.95), 1e-8, 0.0)]

# -----------------------------------------------------------------------------
# train_step: gradient accumulation and clipping


SMALL_VOCAB = replace(TINY, vocab_size=512)  # the tiny model with a smaller head: a second, not five
# float32 sums in another order: measured 2.2e-8 on gradient entries up to 0.063, 4.8e-7 on a loss of 6.4
GRAD_ATOL, LOSS_ATOL = 2e-7, 1e-5


class Batches:
    """A loader that hands out the rows of (x, y) in order, B at a time."""

    def __init__(self, x: torch.Tensor, y: torch.Tensor, B: int):
        self.x, self.y, self.B, self.i = x, y, B, 0

    def next_batch(self) -> tuple[torch.Tensor, torch.Tensor]:
        rows = slice(self.i * self.B, (self.i + 1) * self.B)
        self.i += 1
        return self.x[rows], self.y[rows]


class KeepGradients(torch.optim.SGD):
    """An optimizer whose step keeps the gradients it is given (after clipping) and changes nothing."""

    def step(self, closure=None):
        self.grads = {id(p): p.grad.clone() for group in self.param_groups for p in group["params"]}


def whole_batch(model: GPT):
    """8 rows of 16 random tokens, with the loss and each parameter's gradient of one backward pass over them."""
    data = torch.randint(0, model.config.vocab_size, (8, 17), generator=torch.Generator().manual_seed(0))
    x, y = data[:, :-1], data[:, 1:]
    model.zero_grad(set_to_none=True)
    _, loss = model.train()(x, y)
    loss.backward()
    grads = {n: p.grad.clone() for n, p in model.named_parameters()}
    model.zero_grad(set_to_none=True)
    return x, y, loss.item(), grads


def accumulated(model: GPT, x, y, B: int, grad_clip: float) -> tuple[dict, dict]:
    """train_step over x, y in micro-batches of B rows: (its metrics, each parameter's gradient at the update)."""
    cfg = replace(train_gpt.preset_config("tiny"), grad_clip=grad_clip, batch_size=B, seq_len=x.size(1),
                  total_batch_size=x.numel())
    opt = KeepGradients(model.parameters(), lr=0.0)
    metrics = train_gpt.train_step(model=model, optimizer=opt, loader=Batches(x, y, B), grad_accum=x.size(0) // B,
                                   step=0, cfg=cfg, device="cpu", dtype=torch.float32)
    return metrics, {n: opt.grads[id(p)] for n, p in model.named_parameters()}


def test_gradient_accumulation_is_one_big_batch():
    """Four micro-steps of 2 rows give the loss and the gradient of one pass over all 8 rows: each micro-step's
    loss is divided by their number, so the gradients add up to the mean's."""
    model = random_model(SMALL_VOCAB)
    x, y, loss, want = whole_batch(model)
    metrics, grads = accumulated(model, x, y, B=2, grad_clip=0.0)
    assert metrics["train_loss"] == pytest.approx(loss, abs=LOSS_ATOL)
    for n in want:
        torch.testing.assert_close(grads[n], want[n], rtol=0, atol=GRAD_ATOL, msg=lambda m: f"{n}: {m}")


def test_clip_scales_the_gradient_by_its_global_norm():
    """With --grad-clip below the gradient's norm, every gradient is scaled by the same clip / norm, the norm
    taken over all parameters at once (the tied embedding counted once), and grad_norm logs it before the clip."""
    model = random_model(SMALL_VOCAB)
    x, y, _, want = whole_batch(model)
    norm = torch.stack([g.double().norm() for g in want.values()]).norm().item()
    assert norm > 0.5  # so that a clip of 0.5 clips
    metrics, grads = accumulated(model, x, y, B=2, grad_clip=0.5)
    assert metrics["grad_norm"] == pytest.approx(norm, rel=1e-5)  # float32 against float64: 7e-8 here
    for n in want:
        torch.testing.assert_close(grads[n], want[n] * (0.5 / norm), rtol=0, atol=GRAD_ATOL, msg=lambda m: f"{n}: {m}")

# -----------------------------------------------------------------------------
# train_step: the learning rate of each group


@pytest.mark.parametrize("step", [0, 3, 10, 35, 49], ids=["warmup", "warmup end", "stable", "decay", "last"])
def test_muon_groups_get_their_own_scaled_schedule(step):
    """--recipe modern: at each step (warmup, the stable part, the decay of wsd) train_step sets the Muon groups'
    lr to the schedule's times muon_lr / max_lr, and the AdamW groups' to the schedule's own, before the update."""
    cfg = replace(train_gpt.apply_recipe(train_gpt.preset_config("tiny"), "modern"), vocab_size=512, batch_size=2,
                  seq_len=16, total_batch_size=32)
    assert cfg.muon_lr / cfg.max_lr > 6  # 0.02 / 3e-3: far from 1, so a Muon group at the schedule's lr shows
    model = GPT(train_gpt.model_config(cfg))
    optimizer = train_gpt.configure_optimizer(model, cfg, "cpu")
    seen = []
    optimizer.register_step_pre_hook(lambda opt, args, kwargs: seen.append(
        [(group.get("muon", False), group["lr"]) for group in opt.param_groups]))
    data = torch.randint(0, 512, (2, 17), generator=torch.Generator().manual_seed(0))
    metrics = train_gpt.train_step(model=model, optimizer=optimizer, loader=Batches(data[:, :-1], data[:, 1:], 2),
                                   grad_accum=1, step=step, cfg=cfg, device="cpu", dtype=torch.float32)
    [groups] = seen  # one update
    lr = train_gpt.get_lr(step, cfg)
    assert lr > 0 and metrics["lr"] == lr
    assert [muon for muon, _ in groups] == [True, True, False, False]  # q/k/v, the other matrices; AdamW's two
    for muon, group_lr in groups:
        assert group_lr == pytest.approx(lr * cfg.muon_lr / cfg.max_lr if muon else lr, rel=1e-12)
