"""
A plain GPT-2 training step and sampler: the baseline that bench/ measures this repository against.

What a first from-scratch implementation does: float32, eager, attention written out (q k^T, a causal
mask, softmax, then v), logits for every position, torch.optim.AdamW with neither fused nor foreach
kernels, and sampling that runs the whole sequence again for every new token. The parameter names are
model.py's, so both load the same weights and compute the same function.
"""

import math

import torch
import torch.nn as nn
from torch.nn import functional as F


class PlainAttention(nn.Module):

    def __init__(self, n_embd: int, n_head: int, block_size: int):
        super().__init__()
        self.n_head = n_head
        self.c_attn = nn.Linear(n_embd, 3 * n_embd)
        self.c_proj = nn.Linear(n_embd, n_embd)
        self.register_buffer("mask", torch.tril(torch.ones(block_size, block_size, dtype=torch.bool)), persistent=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        B, T, C = x.size()
        q, k, v = self.c_attn(x).split(C, dim=2)
        q, k, v = (t.view(B, T, self.n_head, C // self.n_head).transpose(1, 2) for t in (q, k, v))  # (B, nh, T, hs)
        att = (q @ k.transpose(-2, -1)) / math.sqrt(k.size(-1))  # (B, nh, T, T)
        att = att.masked_fill(~self.mask[:T, :T], float("-inf")).softmax(dim=-1)
        y = (att @ v).transpose(1, 2).contiguous().view(B, T, C)
        return self.c_proj(y)


class PlainBlock(nn.Module):

    def __init__(self, n_embd: int, n_head: int, block_size: int):
        super().__init__()
        self.ln_1 = nn.LayerNorm(n_embd)
        self.attn = PlainAttention(n_embd, n_head, block_size)
        self.ln_2 = nn.LayerNorm(n_embd)
        self.mlp = nn.ModuleDict(dict(c_fc=nn.Linear(n_embd, 4 * n_embd), c_proj=nn.Linear(4 * n_embd, n_embd)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.attn(self.ln_1(x))
        return x + self.mlp.c_proj(F.gelu(self.mlp.c_fc(self.ln_2(x)), approximate="tanh"))


class PlainGPT(nn.Module):

    def __init__(self, config):
        super().__init__()
        self.config = config
        C = config.n_embd
        self.transformer = nn.ModuleDict(dict(
            wte=nn.Embedding(config.vocab_size, C), wpe=nn.Embedding(config.block_size, C),
            h=nn.ModuleList([PlainBlock(C, config.n_head, config.block_size) for _ in range(config.n_layer)]),
            ln_f=nn.LayerNorm(C)))
        self.lm_head = nn.Linear(C, config.vocab_size, bias=False)
        self.transformer.wte.weight = self.lm_head.weight

    def forward(self, idx: torch.Tensor, targets: torch.Tensor | None = None):
        T = idx.size(1)
        x = self.transformer.wte(idx) + self.transformer.wpe(torch.arange(T, device=idx.device))
        for block in self.transformer.h:
            x = block(x)
        logits = self.lm_head(self.transformer.ln_f(x))  # (B, T, vocab): every position
        loss = None if targets is None else F.cross_entropy(logits.view(-1, logits.size(-1)), targets.view(-1))
        return logits, loss

    @torch.no_grad()
    def generate(self, idx: torch.Tensor, max_new_tokens: int, top_k: int = 50,
                 generator: torch.Generator | None = None) -> torch.Tensor:
        """Full recompute: the whole (cropped) sequence again for every new token."""
        for _ in range(max_new_tokens):
            logits, _ = self(idx[:, -self.config.block_size:])
            logits = logits[:, -1, :]
            v, _ = torch.topk(logits, top_k)
            logits[logits < v[:, [-1]]] = -float("inf")
            idx = torch.cat((idx, torch.multinomial(F.softmax(logits, dim=-1), 1, generator=generator)), dim=1)
        return idx


def plain_copy(model) -> PlainGPT:
    """A PlainGPT holding model's weights. SystemExit, one line, for a model outside GPT-2's architecture: the
    plain code computes GPT-2 only (a ReLU² or soft-capped model's weights would even load into it)."""
    if model.config.departures():
        raise SystemExit(f"error: the plain baseline computes GPT-2's architecture, not "
                         f"{', '.join(model.config.departures())}: pass --skip-plain")
    plain = PlainGPT(model.config)
    plain.load_state_dict(model.state_dict())
    return plain


def plain_optimizer(model: nn.Module, lr: float = 6e-4, weight_decay: float = 0.1) -> torch.optim.AdamW:
    """AdamW one tensor at a time (neither fused nor foreach), decay on matrices only."""
    params = list(model.parameters())
    groups = [{"params": [p for p in params if p.dim() >= 2], "weight_decay": weight_decay},
              {"params": [p for p in params if p.dim() < 2], "weight_decay": 0.0}]
    return torch.optim.AdamW(groups, lr=lr, betas=(0.9, 0.95), eps=1e-8, fused=False, foreach=False)


def plain_step(model: PlainGPT, optimizer: torch.optim.Optimizer, batches: list) -> float:
    """One optimizer step over a list of (x, y) micro-batches, gradients accumulated; returns the loss."""
    optimizer.zero_grad(set_to_none=True)
    total = 0.0
    for x, y in batches:
        _, loss = model(x, y)
        (loss / len(batches)).backward()
        total += loss.item() / len(batches)
    torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
    optimizer.step()
    return total


@torch.no_grad()
def plain_hellaswag(logits_fn, examples: list[dict], enc, block_size: int | None = None,
                    batch_size: int = 32) -> tuple[torch.Tensor, torch.Tensor]:
    """HellaSwag the plain way: four rows of context + ending per example, the logits of every position, and
    the cross-entropy of each ending's tokens. Returns (n, 4) summed and mean losses, as
    hellaswag.score_examples does; it is the reference that function's packed fast path is checked against.

    logits_fn: tokens (R, T) -> logits (R, T, V), any model. batch_size examples (4 rows each) per call,
    sorted by length so that a batch holds little padding. A row longer than block_size loses context from
    the left, the same tokens for the four endings (as hellaswag.pack_example cuts them).
    """
    rendered = []  # per example: four rows of tokens, and where the endings start
    for ex in examples:
        ctx = enc.encode_ordinary(ex["ctx"])
        ends = [enc.encode_ordinary(" " + e) for e in ex["endings"]]
        if block_size is not None:
            ctx = ctx[max(0, len(ctx) + max(map(len, ends)) - block_size):]
        rendered.append(([ctx + end for end in ends], len(ctx)))
    order = sorted(range(len(examples)), key=lambda i: -max(map(len, rendered[i][0])))
    sums, means = torch.zeros(len(examples), 4), torch.zeros(len(examples), 4)
    for start in range(0, len(order), batch_size):
        idx = order[start:start + batch_size]
        rows = [row for i in idx for row in rendered[i][0]]
        T = max(map(len, rows))
        tokens = torch.tensor([row + [0] * (T - len(row)) for row in rows])  # (R, T), right-padded
        scored = torch.zeros(len(rows), T - 1, dtype=torch.bool)  # position t predicts token t+1: an ending's
        for r, row in enumerate(rows):
            scored[r, rendered[idx[r // 4]][1] - 1:len(row) - 1] = True
        logits = logits_fn(tokens)[:, :-1].cpu()  # (R, T-1, V)
        losses = F.cross_entropy(logits[scored].float(), tokens[:, 1:][scored], reduction="none")  # (N,)
        for r, n in enumerate(scored.sum(1).tolist()):  # the losses come row by row, in order
            ending, losses = losses[:n], losses[n:]
            sums[idx[r // 4], r % 4], means[idx[r // 4], r % 4] = ending.sum(), ending.mean()
    return sums, means
