"""
A GPT-2 language model, from scratch, in one file.

Token + position embeddings, then n_layer pre-LayerNorm transformer blocks (causal multi-head
self-attention, then a GELU MLP, each added back to a residual stream), a final LayerNorm and an output
head that shares its weight with the token embedding. Parameter names follow Hugging Face's GPT-2
(transformer.wte, transformer.h.0.attn.c_attn, ...) so its weights map onto ours key by key.

    from model import GPT, PRESETS
    model = GPT(PRESETS["seed"])          # ~16M parameters
    logits, loss = model(idx, targets)    # idx, targets: (B, T) token ids
"""

import math
from dataclasses import dataclass

import torch
import torch.nn as nn
from torch.nn import functional as F


@dataclass
class GPTConfig:
    block_size: int = 1024  # context length: the longest sequence the model can read
    vocab_size: int = 50304  # GPT-2's 50,257 tokens padded to a multiple of 64 (faster matmuls)
    n_layer: int = 12  # number of transformer blocks
    n_head: int = 12  # attention heads per block
    n_embd: int = 768  # width of the residual stream

    def __post_init__(self):
        for name in ("block_size", "vocab_size", "n_layer", "n_head", "n_embd"):
            if getattr(self, name) <= 0:
                raise ValueError(f"{name} must be positive, got {getattr(self, name)}")
        if self.n_embd % self.n_head != 0:
            raise ValueError(f"n_embd ({self.n_embd}) must be divisible by n_head ({self.n_head})")


PRESETS = {
    "seed": GPTConfig(n_layer=4, n_head=8, n_embd=256),  # the reference run: 16,299,520 parameters
    "gpt2": GPTConfig(n_layer=12, n_head=12, n_embd=768),  # GPT-2 small: 124,475,904 at vocab 50,304
    "tiny": GPTConfig(block_size=64, n_layer=2, n_head=2, n_embd=32),  # for tests: seconds on a CPU
}


class CausalSelfAttention(nn.Module):

    def __init__(self, config: GPTConfig):
        super().__init__()
        self.n_head = config.n_head
        self.c_attn = nn.Linear(config.n_embd, 3 * config.n_embd)  # q, k, v for all heads at once
        self.c_proj = nn.Linear(config.n_embd, config.n_embd)
        self.c_proj.RESIDUAL_SCALE = True  # see GPT._init_weights

    def forward(self, x: torch.Tensor, attn_mask: torch.Tensor | None = None) -> torch.Tensor:
        B, T, C = x.size()
        q, k, v = self.c_attn(x).split(C, dim=2)
        # (B, T, C) -> (B, nh, T, hs): heads become a batch dimension
        q = q.view(B, T, self.n_head, C // self.n_head).transpose(1, 2)
        k = k.view(B, T, self.n_head, C // self.n_head).transpose(1, 2)
        v = v.view(B, T, self.n_head, C // self.n_head).transpose(1, 2)
        # softmax(q k^T / sqrt(hs) + causal mask) v, fused (flash attention where the device has it)
        if attn_mask is None:
            y = F.scaled_dot_product_attention(q, k, v, is_causal=True)  # (B, nh, T, hs)
        else:  # a mask of the caller's: (B, 1, T, T), True where query t may read key t'
            y = F.scaled_dot_product_attention(q, k, v, attn_mask=attn_mask)
        y = y.transpose(1, 2).contiguous().view(B, T, C)  # re-assemble the heads side by side
        return self.c_proj(y)


class MLP(nn.Module):

    def __init__(self, config: GPTConfig):
        super().__init__()
        self.c_fc = nn.Linear(config.n_embd, 4 * config.n_embd)
        self.gelu = nn.GELU(approximate="tanh")  # GPT-2 used the tanh approximation
        self.c_proj = nn.Linear(4 * config.n_embd, config.n_embd)
        self.c_proj.RESIDUAL_SCALE = True

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.c_proj(self.gelu(self.c_fc(x)))


class Block(nn.Module):

    def __init__(self, config: GPTConfig):
        super().__init__()
        self.ln_1 = nn.LayerNorm(config.n_embd)
        self.attn = CausalSelfAttention(config)
        self.ln_2 = nn.LayerNorm(config.n_embd)
        self.mlp = MLP(config)

    def forward(self, x: torch.Tensor, attn_mask: torch.Tensor | None = None) -> torch.Tensor:
        # pre-LayerNorm: normalise the input of each branch, keep the residual stream clean
        x = x + self.attn(self.ln_1(x), attn_mask)
        x = x + self.mlp(self.ln_2(x))
        return x


class GPT(nn.Module):

    def __init__(self, config: GPTConfig):
        super().__init__()
        self.config = config
        self.transformer = nn.ModuleDict(dict(
            wte=nn.Embedding(config.vocab_size, config.n_embd),  # token embedding
            wpe=nn.Embedding(config.block_size, config.n_embd),  # position embedding
            h=nn.ModuleList([Block(config) for _ in range(config.n_layer)]),
            ln_f=nn.LayerNorm(config.n_embd),
        ))
        self.lm_head = nn.Linear(config.n_embd, config.vocab_size, bias=False)
        # weight tying: the output head reads the token embedding (one tensor, GPT-2 and Press & Wolf 2017)
        self.transformer.wte.weight = self.lm_head.weight
        self.apply(self._init_weights)

    def _init_weights(self, module: nn.Module):
        # GPT-2: normal(0, 0.02) everywhere; the projections that write into the residual stream are
        # scaled by 1/sqrt(2 * n_layer) so its variance doesn't grow with depth (2 writes per block)
        if isinstance(module, nn.Linear):
            std = 0.02
            if getattr(module, "RESIDUAL_SCALE", False):
                std *= (2 * self.config.n_layer) ** -0.5
            torch.nn.init.normal_(module.weight, mean=0.0, std=std)
            if module.bias is not None:
                torch.nn.init.zeros_(module.bias)
        elif isinstance(module, nn.Embedding):
            torch.nn.init.normal_(module.weight, mean=0.0, std=0.02)

    def num_params(self, non_embedding: bool = False) -> int:
        """Parameter count, the tied head counted once; non_embedding leaves out the position table."""
        n = sum(p.numel() for p in self.parameters())  # parameters() yields a shared tensor once
        if non_embedding:
            n -= self.transformer.wpe.weight.numel()
        return n

    def hidden_states(self, idx: torch.Tensor, pos: torch.Tensor | None = None,
                      attn_mask: torch.Tensor | None = None) -> torch.Tensor:
        """idx: (B, T) token ids. Returns the final hidden states (B, T, C), after ln_f: what lm_head reads.

        By default token t sits at position t and reads tokens 0..t. A caller may instead give each token's
        position (pos, (B, T)) and what it reads (attn_mask, (B, 1, T, T) bool): that packs several
        sequences sharing a prefix into one row, the prefix computed once (hellaswag.py does this with a
        context and its four endings). Separate from forward so that a caller who needs the logits of a
        few positions only can apply lm_head to those alone.
        """
        B, T = idx.size()
        if pos is None:
            if T > self.config.block_size:
                raise ValueError(f"sequence of length {T} is longer than the context ({self.config.block_size})")
            pos = torch.arange(0, T, dtype=torch.long, device=idx.device)  # (T,)
        elif pos.numel() and int(pos.max()) >= self.config.block_size:
            raise ValueError(f"position {int(pos.max())} is past the context ({self.config.block_size})")
        x = self.transformer.wte(idx) + self.transformer.wpe(pos)  # (B, T, C) + (T, C) or (B, T, C)
        for block in self.transformer.h:
            x = block(x, attn_mask)
        return self.transformer.ln_f(x)  # (B, T, C)

    def forward(self, idx: torch.Tensor, targets: torch.Tensor | None = None):
        """idx, targets: (B, T) token ids. Returns logits (B, T, vocab_size) and the mean loss (or None)."""
        logits = self.lm_head(self.hidden_states(idx))  # (B, T, vocab_size)
        loss = None
        if targets is not None:
            # in float32 even under autocast: a softmax over 50k entries is where bf16 hurts most
            loss = F.cross_entropy(logits.float().view(-1, logits.size(-1)), targets.view(-1))
        return logits, loss

    @torch.no_grad()
    def generate(self, idx: torch.Tensor, max_new_tokens: int, temperature: float = 1.0,
                 top_k: int | None = None, n_vocab: int | None = None,
                 generator: torch.Generator | None = None) -> torch.Tensor:
        """Extend idx (B, T) by max_new_tokens sampled tokens, one at a time, feeding each back in.

        top_k keeps only the k most likely tokens; n_vocab (the tokenizer's real size) stops the
        padding ids, which no text ever contains, from being sampled.
        """
        for _ in range(max_new_tokens):
            idx_cond = idx[:, -self.config.block_size:]  # crop to the context the model can read
            logits, _ = self(idx_cond)
            logits = logits[:, -1, :].float() / temperature  # (B, vocab_size): the next token only
            if n_vocab is not None:
                logits[:, n_vocab:] = -float("inf")
            if top_k is not None:
                v, _ = torch.topk(logits, min(top_k, logits.size(-1)))
                logits[logits < v[:, [-1]]] = -float("inf")
            probs = F.softmax(logits, dim=-1)
            idx_next = torch.multinomial(probs, num_samples=1, generator=generator)  # (B, 1)
            idx = torch.cat((idx, idx_next), dim=1)
        return idx
