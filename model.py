"""
A GPT-2 language model, from scratch, in one file.

Token + position embeddings, then n_layer pre-LayerNorm transformer blocks (causal multi-head
self-attention, then a GELU MLP, each added back to a residual stream), a final LayerNorm and an output
head that shares its weight with the token embedding. Parameter names follow Hugging Face's GPT-2
(transformer.wte, transformer.h.0.attn.c_attn, ...) so its weights map onto ours key by key.

    from model import GPT, GPTConfig
    model = GPT(GPTConfig(n_layer=4, n_head=8, n_embd=256))   # the `seed` model: ~16M parameters
    logits, _ = model(idx)                # idx: (B, T) token ids -> logits (B, T, vocab_size)
    _, loss = model(idx, targets)         # the mean loss, the logits never materialised (head_loss)
"""

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
    # departures from GPT-2 that train_gpt.py --recipe modern turns on; the defaults are GPT-2's own
    rope: bool = False  # rotary position embeddings in attention (Su et al. 2021) instead of a learned table
    qk_norm: bool = False  # RMS-normalise each head's queries and keys before attention (Dehghani et al. 2023)
    mlp: str = "gelu"  # the MLP's activation: "gelu" (GPT-2's tanh approximation) or "relu2", ReLU squared (So et al. 2021)
    logit_softcap: float = 0.0  # above 0: logits = c * tanh(logits / c), smoothly bounded by c (Gemma 2)
    zero_init_proj: bool = False  # the projections into the residual stream start at zero: each block starts as the identity

    def __post_init__(self):
        for name in ("block_size", "vocab_size", "n_layer", "n_head", "n_embd"):
            if getattr(self, name) <= 0:
                raise ValueError(f"{name} must be positive, got {getattr(self, name)}")
        if self.n_embd % self.n_head != 0:
            raise ValueError(f"n_embd ({self.n_embd}) must be divisible by n_head ({self.n_head})")
        if self.rope and (self.n_embd // self.n_head) % 2:
            raise ValueError(f"rotary embeddings need an even head size, got n_embd / n_head = {self.n_embd // self.n_head}")
        if self.mlp not in ("gelu", "relu2"):
            raise ValueError(f"mlp must be 'gelu' or 'relu2', got {self.mlp!r}")
        if self.logit_softcap < 0:
            raise ValueError(f"logit_softcap can't be negative, got {self.logit_softcap}")

    def departures(self) -> list[str]:
        """What of GPT-2's architecture this config changes, in words (zero_init_proj only changes the start)."""
        changes = (("rotary positions", self.rope), ("QK-norm", self.qk_norm), ("a ReLU² MLP", self.mlp != "gelu"),
                   ("soft-capped logits", self.logit_softcap))
        return [what for what, on in changes if on]

    def num_params(self) -> int:
        """The parameter count of a GPT of this config (as GPT.num_params counts it), without building one."""
        C = self.n_embd
        per_block = 12 * C * C + 13 * C  # c_attn, attn.c_proj, c_fc, mlp.c_proj with their biases; ln_1, ln_2
        return self.n_layer * per_block + (self.vocab_size + (0 if self.rope else self.block_size) + 2) * C  # + ln_f

    @property
    def is_gpt2(self) -> bool:
        """Whether this is GPT-2's architecture (what Hugging Face's GPT2LMHeadModel computes)."""
        return not self.departures()


GPT2_NAMES = ("gpt2", "gpt2-medium", "gpt2-large", "gpt2-xl")  # OpenAI's GPT-2 on the Hugging Face hub
# the weights Hugging Face's GPT-2 keeps in OpenAI's Conv1D layout, (in, out), where nn.Linear keeps (out, in)
CONV1D_WEIGHTS = ("attn.c_attn.weight", "attn.c_proj.weight", "mlp.c_fc.weight", "mlp.c_proj.weight")


class Rotary(nn.Module):
    """Rotary position embedding (Su et al. 2021): each pair of channels of a query or key is rotated by an
    angle proportional to the token's position, so that q . k depends on the two positions' difference only."""

    def __init__(self, head_size: int, base: float = 10000.0):
        super().__init__()
        # one frequency per channel pair, from 1 down to 1/base; not a weight: not in the state dict
        self.register_buffer("inv_freq", base ** -(torch.arange(0, head_size, 2).float() / head_size), persistent=False)

    def forward(self, pos: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """pos: (T,) or (B, T) positions -> cos, sin of the angles, (1, 1, T, hs/2) or (B, 1, T, hs/2)."""
        angles = pos.float()[..., None] * self.inv_freq  # (T, hs/2) or (B, T, hs/2)
        angles = angles[None, None] if pos.dim() == 1 else angles[:, None]
        return angles.cos(), angles.sin()


def apply_rotary(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Rotate the channel pairs (i, i + hs/2) of x (B, nh, T, hs) by the angles of cos, sin."""
    x1, x2 = x.chunk(2, dim=-1)
    cos, sin = cos.to(x.dtype), sin.to(x.dtype)
    return torch.cat((x1 * cos - x2 * sin, x1 * sin + x2 * cos), dim=-1)


class Linear(nn.Linear):
    """nn.Linear, except for a few rows on a CPU (a sampling step: B rows, one token each), where a matmul
    costs more to call than to compute. There it runs in float32 even under bfloat16 autocast (on an Intel
    Xeon with AMX a bfloat16 matmul of 4 rows costs 30-40 us whatever its size, float32's 10-20 us), and as
    W x^T where the CPU has no AMX (~1.5x faster than x W^T on an AMD EPYC; 2.5-4x slower with AMX).
    See docs/speed.md."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.numel() > 16 * self.in_features or x.device.type != "cpu" or self.weight.dtype != torch.float32:
            return F.linear(x, self.weight, self.bias)
        with torch.autocast("cpu", enabled=False):  # float32 whatever autocast says: what it gives without
            x = x.float()
            if self.bias is None or has_amx(x.device):
                return F.linear(x, self.weight, self.bias)
            y = torch.addmm(self.bias.unsqueeze(1), self.weight, x.reshape(-1, self.in_features).t())  # (out, N)
            return y.t().contiguous().view(x.shape[:-1] + (self.out_features,))  # rows contiguous, as F.linear makes them


class CausalSelfAttention(nn.Module):

    def __init__(self, config: GPTConfig):
        super().__init__()
        self.n_head = config.n_head
        self.qk_norm = config.qk_norm
        self.c_attn = Linear(config.n_embd, 3 * config.n_embd)  # q, k, v for all heads at once
        self.c_proj = Linear(config.n_embd, config.n_embd)
        self.c_proj.RESIDUAL_SCALE = True  # see GPT._init_weights

    def forward(self, x: torch.Tensor, attn_mask: torch.Tensor | None = None,
                cache: "KVCache | None" = None, rotary: tuple[torch.Tensor, torch.Tensor] | None = None) -> torch.Tensor:
        B, T, C = x.size()
        q, k, v = self.c_attn(x).split(C, dim=2)
        # (B, T, C) -> (B, nh, T, hs): heads become a batch dimension
        q = q.view(B, T, self.n_head, C // self.n_head).transpose(1, 2)
        k = k.view(B, T, self.n_head, C // self.n_head).transpose(1, 2)
        v = v.view(B, T, self.n_head, C // self.n_head).transpose(1, 2)
        if self.qk_norm:  # unit RMS: the attention logits can't grow without bound
            q, k = F.rms_norm(q, (q.size(-1),)), F.rms_norm(k, (k.size(-1),))
        if rotary is not None:  # positions enter here, by rotating queries and keys (before they are cached)
            q, k = apply_rotary(q, *rotary), apply_rotary(k, *rotary)
        # softmax(q k^T / sqrt(hs) + causal mask) v: SDPA's fused kernel, or causal_attention's matmuls
        if cache is not None:  # sampling: the prompt first (causal), then one new token at a time
            prompt = cache.len == 0
            k, v = cache.append(k, v)  # (B, nh, tokens so far, hs)
            y = F.scaled_dot_product_attention(q, k, v, is_causal=prompt)  # a new token reads every key
        elif attn_mask is None:
            y = causal_attention(q, k, v)  # (B, nh, T, hs)
        else:  # a mask of the caller's: (B, 1, T, T), True where query t may read key t'
            y = F.scaled_dot_product_attention(q, k, v, attn_mask=attn_mask)
        y = y.transpose(1, 2).contiguous().view(B, T, C)  # re-assemble the heads side by side
        return self.c_proj(y)


def causal_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """softmax(q k^T / sqrt(hs) + causal mask) v for queries, keys and values (B, nh, T, hs): SDPA's fused
    kernel, except in bfloat16 on a CPU, where CausalAttention's plain matmuls run forward and backward ~2x
    faster at this model's head sizes (its flash kernel in float32 is the faster one)."""
    if q.device.type == "cpu" and matmul_dtype(q) == torch.bfloat16:
        return CausalAttention.apply(q, k, v)
    return F.scaled_dot_product_attention(q, k, v, is_causal=True)


ATTN_ROWS = 256  # queries per block in CausalAttention


class CausalAttention(torch.autograd.Function):
    """Causal attention as batched matmuls around a softmax, ATTN_ROWS queries at a time: a block of queries
    reads the keys up to its own last one only, so the matmuls skip scores the mask would zero (at T = 512,
    a quarter of all the scores, half of the masked ones). The attention weights are kept for the backward
    pass: 2 bytes each in bfloat16, 12.6 MB a layer for `seed` at 4 x 512, where a flash kernel keeps a few
    numbers per row and recomputes the rest. In return every product is a large matmul."""

    @staticmethod
    def forward(ctx, q, k, v):
        dtype, T = matmul_dtype(q), q.size(-2)
        with torch.autocast(q.device.type, enabled=False):  # the dtypes are chosen here
            q = q.to(dtype) * q.size(-1) ** -0.5  # the scale on the queries: T x hs numbers, not T x T
            k, v = k.to(dtype), v.to(dtype)
            ys, atts = [], []
            for r0 in range(0, T, ATTN_ROWS):  # queries r0..r1-1 read keys 0..r1-1
                r1 = min(T, r0 + ATTN_ROWS)
                scores = q[..., r0:r1, :] @ k[..., :r1, :].transpose(-2, -1)  # (B, nh, r1 - r0, r1)
                future = torch.full((r1 - r0, r1 - r0), float("-inf"), dtype=dtype, device=q.device).triu_(1)
                scores[..., r0:] += future  # the block's own keys: each query reads up to itself
                atts.append(torch.softmax(scores, dim=-1))  # float32 inside, stored in dtype
                ys.append(atts[-1] @ v[..., :r1, :])
            ctx.save_for_backward(q, k, v, *atts)
            return torch.cat(ys, dim=-2)

    @staticmethod
    def backward(ctx, dy):
        q, k, v, *atts = ctx.saved_tensors
        dy = dy.to(v.dtype)
        dq, dk, dv = torch.empty_like(q), torch.zeros_like(k), torch.zeros_like(v)
        for att in atts:  # (B, nh, r1 - r0, r1): queries r0..r1-1 against keys 0..r1-1
            r1 = att.size(-1)
            r0 = r1 - att.size(-2)
            dy_rows = dy[..., r0:r1, :]
            dv[..., :r1, :] += att.transpose(-2, -1) @ dy_rows
            datt = dy_rows @ v[..., :r1, :].transpose(-2, -1)
            dscores = torch._softmax_backward_data(datt, att, -1, att.dtype)  # att * (datt - rowsum(datt * att))
            dq[..., r0:r1, :] = (dscores @ k[..., :r1, :]) * q.size(-1) ** -0.5
            dk[..., :r1, :] += dscores.transpose(-2, -1) @ q[..., r0:r1, :]  # q carries the scale already
        return dq, dk, dv


class KVCache:
    """The keys and values of one attention layer for the tokens read so far, kept while sampling.

    Without it every new token runs the model over the whole sequence again, recomputing keys and values
    that can't have changed (a token only reads the ones before it). With it, each step runs the new token
    alone: O(1) tokens of work per step instead of O(T).
    """

    def __init__(self, max_len: int):
        self.max_len = max_len
        self.len = 0  # tokens cached so far
        self.k = self.v = None  # (B, nh, max_len, hs), allocated on first use in the dtype of the keys

    def append(self, k: torch.Tensor, v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Add the keys and values (B, nh, T, hs) of T new tokens; return those of all tokens so far."""
        B, nh, T, hs = k.shape
        if self.len + T > self.max_len:
            raise ValueError(f"KV cache full: {self.len} + {T} tokens > {self.max_len}")
        if self.k is None:
            self.k = k.new_empty(B, nh, self.max_len, hs)
            self.v = v.new_empty(B, nh, self.max_len, hs)
        self.k[:, :, self.len:self.len + T] = k
        self.v[:, :, self.len:self.len + T] = v
        self.len += T
        return self.k[:, :, :self.len], self.v[:, :, :self.len]


class MLP(nn.Module):

    def __init__(self, config: GPTConfig):
        super().__init__()
        self.c_fc = Linear(config.n_embd, 4 * config.n_embd)
        self.gelu = nn.GELU(approximate="tanh")  # GPT-2 used the tanh approximation
        self.relu2 = config.mlp == "relu2"
        self.c_proj = Linear(4 * config.n_embd, config.n_embd)
        self.c_proj.RESIDUAL_SCALE = True

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.c_fc(x)
        h = F.relu(h).square() if self.relu2 else self.gelu(h)
        return self.c_proj(h)


class Block(nn.Module):

    def __init__(self, config: GPTConfig):
        super().__init__()
        self.ln_1 = nn.LayerNorm(config.n_embd)
        self.attn = CausalSelfAttention(config)
        self.ln_2 = nn.LayerNorm(config.n_embd)
        self.mlp = MLP(config)

    def forward(self, x: torch.Tensor, attn_mask: torch.Tensor | None = None,
                cache: KVCache | None = None, rotary: tuple[torch.Tensor, torch.Tensor] | None = None) -> torch.Tensor:
        # pre-LayerNorm: normalise the input of each branch, keep the residual stream clean
        x = x + self.attn(self.ln_1(x), attn_mask, cache, rotary)
        x = x + self.mlp(self.ln_2(x))
        return x


class GPT(nn.Module):

    def __init__(self, config: GPTConfig):
        super().__init__()
        self.config = config
        self.transformer = nn.ModuleDict(dict(
            wte=nn.Embedding(config.vocab_size, config.n_embd),  # token embedding
            # position embedding; with rope, positions rotate queries and keys in attention instead
            **({} if config.rope else dict(wpe=nn.Embedding(config.block_size, config.n_embd))),
            h=nn.ModuleList([Block(config) for _ in range(config.n_layer)]),
            ln_f=nn.LayerNorm(config.n_embd),
        ))
        if config.rope:
            self.rotary = Rotary(config.n_embd // config.n_head)
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
                if self.config.zero_init_proj:
                    std = 0.0
            torch.nn.init.normal_(module.weight, mean=0.0, std=std)
            if module.bias is not None:
                torch.nn.init.zeros_(module.bias)
        elif isinstance(module, nn.Embedding):
            torch.nn.init.normal_(module.weight, mean=0.0, std=0.02)

    def num_params(self, non_embedding: bool = False) -> int:
        """Parameter count, the tied head counted once; non_embedding leaves out the position table."""
        n = sum(p.numel() for p in self.parameters())  # parameters() yields a shared tensor once
        if non_embedding and "wpe" in self.transformer:
            n -= self.transformer.wpe.weight.numel()
        return n

    @classmethod
    def from_pretrained(cls, name_or_dir: str) -> "GPT":
        """OpenAI's GPT-2 (gpt2, gpt2-medium, gpt2-large, gpt2-xl) or a Hugging Face GPT-2 folder, as our GPT.

        Goes through transformers (imported here: nothing else in this file needs it), so the hub's cache
        and its offline rules apply; its OSError for a model it can't find is passed on. The vocabulary
        stays at the checkpoint's own size (50,257 for OpenAI's): padding it would add rows nobody trained.
        A config our blocks can't compute (another activation, an untied head, ...), or weights that don't fit
        it (transformers would start what is missing from random numbers), is a ValueError.
        """
        import os
        if os.path.isfile(name_or_dir):  # a checkpoint of ours, a weights file: transformers would call it a bad config
            raise ValueError(f"{name_or_dir} is a file, not a GPT-2 name ({', '.join(GPT2_NAMES)}) or a Hugging Face "
                             "GPT-2 folder")
        try:
            from transformers import GPT2LMHeadModel
        except ImportError:
            raise ImportError("GPT.from_pretrained needs the transformers package: pip install transformers") from None
        try:
            hf, info = GPT2LMHeadModel.from_pretrained(name_or_dir, output_loading_info=True)
        except RuntimeError as e:
            if "mismatched_sizes" not in str(e):
                raise
            raise ValueError(f"the weights of {name_or_dir} have other shapes than its config.json says") from None
        except Exception as e:  # safetensors' own error, for a weights file cut short (a copy stopped half-way)
            if type(e).__name__ != "SafetensorError":
                raise
            raise ValueError(f"the weights file of {name_or_dir} is damaged: {e}") from None
        missing = sorted(k for k in info["missing_keys"] if not k.endswith((".attn.bias", ".attn.masked_bias")))
        if missing:
            raise ValueError(f"the weights of {name_or_dir} lack {len(missing)} tensors its config.json calls for "
                             f"(e.g. {missing[0]})")
        unused = sorted(k for k in info["unexpected_keys"] if not k.endswith((".attn.bias", ".attn.masked_bias")))
        if unused:  # more layers than config.json says: transformers would drop them with a note
            raise ValueError(f"the weights of {name_or_dir} hold {len(unused)} tensors its config.json doesn't call for "
                             f"(e.g. {unused[0]})")
        c = hf.config
        # what our blocks hard-code; a config that says otherwise describes a different function
        differences = {
            "activation_function": (c.activation_function, ("gelu_new", "gelu_pytorch_tanh")),  # both tanh GELU
            "n_inner": (c.n_inner, (None, 4 * c.n_embd)),  # MLP width 4 x n_embd
            "layer_norm_epsilon": (c.layer_norm_epsilon, (1e-5,)),  # nn.LayerNorm's default
            "scale_attn_weights": (c.scale_attn_weights, (True,)),  # scores / sqrt(head size)
            "scale_attn_by_inverse_layer_idx": (c.scale_attn_by_inverse_layer_idx, (False,)),
            "add_cross_attention": (c.add_cross_attention, (False,)),
            "tie_word_embeddings": (c.tie_word_embeddings, (True,)),  # lm_head is wte
        }
        for field, (value, ours) in differences.items():
            if value not in ours:
                raise ValueError(f"the config of {name_or_dir} has {field}={value!r}, but this GPT only computes "
                                 f"{' or '.join(repr(v) for v in ours)}")
        model = cls(GPTConfig(block_size=c.n_positions, vocab_size=c.vocab_size, n_layer=c.n_layer,
                              n_head=c.n_head, n_embd=c.n_embd))
        sd, sd_hf = model.state_dict(), hf.state_dict()
        # the causal mask some versions of transformers keep as a buffer is not a weight: we compute it
        sd_hf = {k: v for k, v in sd_hf.items() if not k.endswith((".attn.bias", ".attn.masked_bias"))}
        if set(sd) != set(sd_hf):
            raise ValueError(f"the weights of {name_or_dir} don't match ours (missing: {sorted(set(sd) - set(sd_hf))}, "
                             f"unexpected: {sorted(set(sd_hf) - set(sd))})")
        with torch.no_grad():
            for k, v in sd.items():  # the tied wte / lm_head tensor is copied twice, the same values both times
                src = sd_hf[k].t() if k.endswith(CONV1D_WEIGHTS) else sd_hf[k]
                assert src.shape == v.shape, f"{k}: {tuple(src.shape)} in {name_or_dir}, {tuple(v.shape)} here"
                v.copy_(src)
        return model

    def hidden_states(self, idx: torch.Tensor, pos: torch.Tensor | None = None,
                      attn_mask: torch.Tensor | None = None, cache: list[KVCache] | None = None) -> torch.Tensor:
        """idx: (B, T) token ids. Returns the final hidden states (B, T, C), after ln_f: what lm_head reads.

        By default token t sits at position t and reads tokens 0..t. A caller may instead give each token's
        position (pos, (B, T)) and what it reads (attn_mask, (B, 1, T, T) bool): that packs several
        sequences sharing a prefix into one row, the prefix computed once (hellaswag.py does this with a
        context and its four endings). Separate from forward so that a caller who needs the logits of a
        few positions only can apply lm_head to those alone. With cache (one KVCache per block, see
        generate), idx holds the tokens after those already cached: the prompt, then one token per call.
        """
        if idx.dim() != 2:  # a single sequence (T,) would fail deep inside attention
            raise ValueError(f"idx must be token ids of shape (B, T), got shape {tuple(idx.shape)}")
        B, T = idx.size()
        if cache is not None:
            start = cache[0].len  # the tokens already cached sit at positions 0..start-1
            if start > 0 and T != 1:
                raise ValueError("a cached forward pass takes the whole prompt first, then one token at a time")
            if start + T > self.config.block_size:
                raise ValueError(f"sequence of length {start + T} is longer than the context ({self.config.block_size})")
            pos = torch.arange(start, start + T, dtype=torch.long, device=idx.device)  # (T,)
        elif pos is None:
            if T > self.config.block_size:
                raise ValueError(f"sequence of length {T} is longer than the context ({self.config.block_size})")
            pos = torch.arange(0, T, dtype=torch.long, device=idx.device)  # (T,)
        elif pos.numel() and int(pos.max()) >= self.config.block_size:
            raise ValueError(f"position {int(pos.max())} is past the context ({self.config.block_size})")
        x = self.transformer.wte(idx)  # (B, T, C)
        rotary = None
        if self.config.rope:
            rotary = self.rotary(pos)  # cos, sin for the attention layers
        else:
            x = x + self.transformer.wpe(pos)  # + (T, C) or (B, T, C)
        for i, block in enumerate(self.transformer.h):
            x = block(x, attn_mask, cache[i] if cache is not None else None, rotary)
        return self.transformer.ln_f(x)  # (B, T, C)

    def forward(self, idx: torch.Tensor, targets: torch.Tensor | None = None):
        """idx: (B, T) token ids. Without targets: the logits (B, T, vocab_size) and None. With targets (B, T):
        None and the mean loss, computed by head_loss a chunk of positions at a time: the B x T x vocab_size
        logits (400 MB in float32 for the `seed` model at 4 x 512) never exist at once."""
        if targets is not None and targets.shape != idx.shape:
            raise ValueError(f"targets must have the shape of idx, {tuple(idx.shape)}, got {tuple(targets.shape)}")
        h = self.hidden_states(idx)  # (B, T, C)
        if targets is None:
            return softcap(self.lm_head(h), self.config.logit_softcap), None  # (B, T, vocab_size)
        loss = head_loss(h.flatten(0, 1), self.lm_head.weight, targets.flatten(), self.config.logit_softcap)
        return None, loss

    @torch.no_grad()
    def generate(self, idx: torch.Tensor, max_new_tokens: int, temperature: float = 1.0,
                 top_k: int | None = None, top_p: float | None = None, n_vocab: int | None = None,
                 generator: torch.Generator | None = None, use_cache: bool = True) -> torch.Tensor:
        """Extend idx (B, T) by max_new_tokens sampled tokens. See stream for the arguments."""
        new = list(self.stream(idx, max_new_tokens, temperature, top_k, top_p, n_vocab, generator, use_cache))
        return torch.cat([idx, *new], dim=1)

    @torch.no_grad()
    def stream(self, idx: torch.Tensor, max_new_tokens: int, temperature: float = 1.0,
               top_k: int | None = None, top_p: float | None = None, n_vocab: int | None = None,
               generator: torch.Generator | None = None, use_cache: bool = True):
        """Sample max_new_tokens tokens after idx (B, T), one at a time, each fed back in; yields each (B, 1).

        temperature divides the logits (below 1: safer, above 1: wilder); top_k keeps the k most likely
        tokens, top_p the fewest whose probabilities add up to p; n_vocab (the tokenizer's real size)
        stops the padding ids, which no text ever contains, from being sampled. use_cache keeps each
        block's keys and values (KVCache), so that a step runs the new token only. Once the sequence fills
        the context, positions would shift at every step, so from there each step recomputes the last
        block_size tokens in full, as without the cache: both give the same tokens.
        """
        if not temperature > 0:  # nan too
            raise ValueError(f"temperature must be positive, got {temperature}")
        if top_k is not None and top_k < 1:
            raise ValueError(f"top_k must be at least 1 (None: every token), got {top_k}")
        if top_p is not None and not 0 < top_p <= 1:
            raise ValueError(f"top_p must be in (0, 1], got {top_p}")
        if idx.dim() != 2 or idx.size(1) == 0:  # the first token is predicted from the last one of the prompt
            raise ValueError(f"the prompt must be token ids of shape (B, T), T at least 1 (a new document starts at "
                             f"<|endoftext|>), got shape {tuple(idx.shape)}")
        block_size = self.config.block_size
        cache = None
        if use_cache:
            cache = [KVCache(min(block_size, idx.size(1) + max_new_tokens)) for _ in self.transformer.h]
        x = idx  # what the next forward pass reads: the prompt, then the last token only
        for _ in range(max_new_tokens):
            if cache is not None and cache[0].len + x.size(1) > block_size:
                cache = None  # the context is full
            if cache is None:
                x = idx[:, -block_size:]  # crop to the context the model can read
            h = self.hidden_states(x, cache=cache)[:, -1, :]  # (B, C): only the last position predicts
            logits = head_logits(h, self.lm_head.weight, self.config.logit_softcap)  # (B, vocab_size)
            idx_next = sample_next(logits, top_k, top_p, n_vocab, generator, temperature)  # (B, 1)
            idx = torch.cat((idx, idx_next), dim=1)
            x = idx_next
            yield idx_next


def softcap(logits: torch.Tensor, c: float) -> torch.Tensor:
    """c * tanh(logits / c), in float32: the logits smoothly bounded by c. c = 0: the logits unchanged."""
    return c * torch.tanh(logits.float() / c) if c else logits

# -----------------------------------------------------------------------------
# the output head and its loss, a chunk of positions at a time
#
# The head is most of a small model's compute (for the `seed` model, 6 x 256 x 50,304 = 77 of the 102.5 MFLOP a
# training step spends per token) and its logits are most of its memory: B x T x 50,304 floats, 400 MB at 4 x 512,
# which a plain cross-entropy then reads and writes several times over, and keeps for the backward pass. Here a
# chunk of positions at a time goes through the matmul (HEAD_CHUNK in float32, twice as many in bfloat16: the same
# bytes), then (on a CPU) SOFTMAX_ROWS of them at a time through the float32 softmax, the loss and, in training,
# the gradient, a few MB that stay in the cache. Only the loss and the gradients of h and of the head's weight are
# kept.
HEAD_CHUNK = 512  # positions per matmul in float32 (103 MB of logits at vocab 50,304); in bfloat16 head_losses pads to it
SOFTMAX_ROWS = 32  # positions per softmax: 6.4 MB of float32 at vocab 50,304
IGNORE_INDEX = -100  # a target that counts for nothing (padding): F.cross_entropy's default ignore_index


def head_logits(h: torch.Tensor, weight: torch.Tensor, cap: float = 0.0) -> torch.Tensor:
    """Float32 logits (N, vocab) of a few hidden states h (N, C) under the head's weight (vocab, C), soft-capped.
    For a few rows (sampling) on a CPU, W h^T runs faster than the same product as h W^T in float32 (~3x on
    AMD EPYCs; about even on an Intel Xeon) and in bfloat16 with AMX (~1.8x: 0.63 against 1.14 ms for 4 rows
    of the `seed` head); in bfloat16 without AMX (autocast) h W^T is the faster one, by ~1.5x."""
    if matmul_dtype(h) == torch.float32 or has_amx(h.device):
        return softcap(torch.mm(weight, h.t()).t().float(), cap)
    return softcap(F.linear(h, weight).float(), cap)


def has_amx(device: torch.device) -> bool:
    """Whether device is a CPU with AMX, the matrix tiles of Intel Xeons since Sapphire Rapids."""
    return device.type == "cpu" and getattr(torch.cpu, "_is_amx_tile_supported", lambda: False)()


def matmul_dtype(x: torch.Tensor) -> torch.dtype:
    """The dtype a matmul of x runs in: autocast's where it is on, else x's own."""
    device_type = x.device.type  # 'meta' (a model traced for its shapes) has no autocast to ask about
    on = torch.amp.is_autocast_available(device_type) and torch.is_autocast_enabled(device_type)
    return torch.get_autocast_dtype(device_type) if on else x.dtype


class HeadChunks:
    """The chunks of positions of h (N, C) and their targets (N,), with the head's weight cast once (autocast
    would cast it for every matmul), one buffer for a chunk's logits and, for bfloat16 logits without the
    soft-cap on a CPU in eager mode, one for the float32 softmax of a few of its rows."""

    def __init__(self, h: torch.Tensor, weight: torch.Tensor, targets: torch.Tensor, cap: float, dtype: torch.dtype,
                 grad: bool = False):
        self.x, self.w, self.targets, self.cap, self.grad = h.to(dtype), head_weight(weight, dtype), targets, cap, grad
        # fewer, larger chunks run faster (in bfloat16 on a CPU with AMX, the eager training step 10-13% at
        # 1,024 positions against 512), but each holds its logits: a chunk is as many bytes in any dtype
        self.size = HEAD_CHUNK * 4 // dtype.itemsize
        self.logits = torch.empty((min(self.size, len(h)), weight.size(0)), dtype=dtype, device=h.device)
        self.in_rows = softmax_in_rows(h.device)
        self.rows = SOFTMAX_ROWS if self.in_rows else self.size
        self.index = torch.arange(self.rows, device=h.device)
        self.probs = None  # float32 logits (a float32 run, or soft-capped) take their softmax straight
        if self.in_rows and dtype != torch.float32 and not cap:
            self.probs = torch.empty((self.rows, weight.size(0)), device=h.device)

    def __iter__(self):
        """Yields (start, x, logits, losses): a chunk's inputs (n, C), its logits (n, vocab) in the buffer, and
        the cross-entropy of each of its targets (n,) float32. With grad, the buffer holds instead the gradient
        of the summed loss with respect to the logits."""
        for i in range(0, len(self.x), self.size):
            x, y = self.x[i:i + self.size], self.targets[i:i + self.size]
            logits = self.logits[:len(x)]
            torch.mm(x, self.w.t(), out=logits)  # (n, vocab)
            yield i, x, logits, self.cross_entropy(logits, y)

    def cross_entropy(self, logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """-log p of targets y (n,) under logits (n, vocab) in float32, self.rows rows at a time. With grad,
        the logits become softmax - one_hot(y), times the soft-cap's derivative, in their own dtype."""
        losses = torch.empty(len(logits), device=logits.device)
        for r in range(0, len(logits), self.rows):
            z, yr = logits[r:r + self.rows], y[r:r + self.rows, None]  # (m, vocab), (m, 1)
            s, dcap, p = z, None, None
            if self.cap:
                t = torch.tanh(z.float() / self.cap)
                s, dcap = t * self.cap, 1 - t * t  # the capped logits, float32, and the cap's derivative
            # s stays as it is until the loss is known: the fallback below reads it again
            if self.in_rows:  # one float32 softmax of the few rows, in cache, its log taken at the targets only
                if self.probs is None:
                    p = torch.softmax(s, 1)  # (m, vocab) float32
                else:  # bfloat16 logits: copied into the float32 buffer, the softmax in place there
                    p = self.probs[:len(z)].copy_(s)
                    torch.softmax(p, 1, out=p)
                log_p = p.gather(1, yr).log()
                # below e^-60 a target's p nears float32's underflow (e^-87), where its log loses digits, then
                # is -inf: those rows the long way
                if bool((log_p < -60).any()):
                    log_p = torch.log_softmax(s, 1, dtype=torch.float32).gather(1, yr)
            else:  # a fused kernel (compiled, a GPU): the log-softmax, and in training the softmax, one loop each
                log_p = torch.log_softmax(s, 1, dtype=torch.float32).gather(1, yr)  # (m, 1)
                if self.grad and self.cap:
                    p = torch.softmax(s, 1)
            losses[r:r + len(z)] = -log_p[:, 0]
            if self.grad:
                if p is None:  # the fused softmax without the cap: straight into the logits' buffer
                    torch.softmax(z, 1, out=z)
                else:
                    z.copy_(p if dcap is None else p * dcap)  # in the logits' dtype
                d_y = log_p.exp() - 1
                if dcap is not None:
                    d_y = d_y * dcap.gather(1, yr)
                # minus one_hot(y), that entry from float32: p - 1 in bfloat16 would lose p's last bits
                z[self.index[:len(z)], yr[:, 0]] = d_y[:, 0].to(z.dtype)
        return losses


def head_weight(weight: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """The head's weight (vocab, C) cast to dtype. In bfloat16 on a CPU, laid out as its transpose (C, vocab)
    in memory: the matmul library takes the logits' product x W^T twice as fast from that layout (5 against
    10 ms for 512 positions of the `seed` head on a CPU with AMX), and W's product with the identity
    writes it, exactly, 7x faster than a transposing copy."""
    w = weight.to(dtype)
    if w.device.type != "cpu" or dtype == torch.float32:
        return w
    return torch.mm(torch.eye(w.size(1), dtype=dtype, device=w.device), w.t()).t()


def softmax_in_rows(device: torch.device) -> bool:
    """Whether the head's softmax goes SOFTMAX_ROWS at a time, in cache: in eager mode on a CPU. Compiled
    (inductor fuses a chunk's softmax into one loop) or on a GPU (where 32 rows would leave most of it
    idle), a chunk goes whole."""
    return device.type == "cpu" and not torch.compiler.is_compiling()


def head_losses(h: torch.Tensor, weight: torch.Tensor, targets: torch.Tensor, cap: float = 0.0) -> torch.Tensor:
    """Cross-entropy of each target (N,) under the logits of h (N, C): (N,) float32, without gradients.

    In bfloat16 the positions are padded to a multiple of HEAD_CHUNK, so that the chunks' matmuls have one
    shape or two: a CPU's bfloat16 matmul library keeps a plan, with a copy of the weight laid out for it,
    for every shape it meets, and HellaSwag's batches, each with its own number of positions, grew a process
    by ~150 MB a batch. Float32's matmul keeps no such plans, and padding cost its HellaSwag 7-11% of the time.
    """
    dtype = matmul_dtype(weight)
    n, pad = len(h), (-len(h) % HEAD_CHUNK if dtype != torch.float32 else 0)
    with torch.no_grad():
        h, targets, kept = drop_ignored(h, targets)
        chunks = HeadChunks(F.pad(h, (0, 0, 0, pad)), weight, F.pad(targets, (0, pad)), cap, dtype)
        per_chunk = [losses for _, _, _, losses in chunks]
        return torch.cat(per_chunk)[:n] * kept if per_chunk else torch.zeros(0, device=h.device)


def drop_ignored(h: torch.Tensor, targets: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """For targets of IGNORE_INDEX, which count for nothing as in F.cross_entropy: h with their rows zeroed (logits
    0: a finite loss to mask, nothing added to the weight's gradient), targets with them 0, and which are kept."""
    kept = targets != IGNORE_INDEX
    return h * kept[:, None], targets.masked_fill(~kept, 0), kept


def head_loss(h: torch.Tensor, weight: torch.Tensor, targets: torch.Tensor, cap: float = 0.0) -> torch.Tensor:
    """Mean cross-entropy of targets (N,) under the logits of h (N, C): what F.cross_entropy of the full
    logits gives, in float32, with its gradient. Under autocast the matmuls run in its dtype. Targets of
    IGNORE_INDEX count for nothing: the mean is over the others, as F.cross_entropy's."""
    if not (torch.is_grad_enabled() and (h.requires_grad or weight.requires_grad)):
        return head_losses(h, weight, targets, cap).sum() / (targets != IGNORE_INDEX).sum()
    return HeadLoss.apply(h, weight, targets, cap, matmul_dtype(weight))


class HeadLoss(torch.autograd.Function):
    """The mean cross-entropy of the head, its gradients computed in the forward pass, chunk by chunk.

    A loss is a scalar, so its backward only scales what its forward can already compute: for each chunk,
    d loss / d logits = (softmax - one_hot(target)) / N, times 1 - tanh^2 under the soft-cap, which goes
    straight into the chunk's two gradient matmuls. Nothing of size vocab is kept for the backward pass
    but the weight's gradient, and no logits are computed twice.
    """

    @staticmethod
    def forward(ctx, h, weight, targets, cap, dtype):
        h, targets, kept = drop_ignored(h, targets)
        chunks = HeadChunks(h, weight, targets, cap, dtype, grad=True)
        loss = torch.zeros((), device=h.device)
        grad_h = torch.empty_like(h)
        grad_w = None  # summed over the chunks in float32, the first chunk's product its start
        for i, x, g, losses in chunks:  # g: d (summed loss) / d logits
            loss += (losses * kept[i:i + len(x)]).sum()
            grad_h[i:i + len(x)] = torch.mm(g, chunks.w)
            if grad_w is None:
                grad_w = torch.mm(g.t(), x).float()
            elif dtype == torch.float32:
                grad_w.addmm_(g.t(), x)
            else:  # a product in the matmul's dtype (bfloat16 under autocast), summed in float32
                grad_w += torch.mm(g.t(), x)
        if grad_w is None:  # no positions: a nan loss, as F.cross_entropy gives
            grad_w = torch.zeros_like(weight, dtype=torch.float32)
        grad_h *= kept[:, None]  # an ignored target's softmax - one_hot reached its row of h
        n = kept.sum()  # the targets that count
        ctx.save_for_backward(grad_h, grad_w, n)
        ctx.weight_dtype = weight.dtype
        return loss / n

    @staticmethod
    def backward(ctx, grad_loss):
        grad_h, grad_w, n = ctx.saved_tensors
        scale = grad_loss / n.clamp(min=1)  # no positions: zero gradients, as the plain head gives
        return grad_h * scale, (grad_w * scale).to(ctx.weight_dtype), None, None, None


def sample_next(logits: torch.Tensor, top_k: int | None = None, top_p: float | None = None,
                n_vocab: int | None = None, generator: torch.Generator | None = None,
                temperature: float = 1.0) -> torch.Tensor:
    """One token id per row of logits (B, vocab), drawn from the softmax of logits / temperature over the
    tokens the filters keep: top_k the k largest logits (before the division), top_p the fewest whose tempered
    probabilities add up to p. Returns (B, 1)."""
    if n_vocab is not None:
        logits = logits[:, :n_vocab]  # the padding ids: no text contains them
    ids = None  # the candidates' token ids, most likely first (None: every token, in vocabulary order)
    if top_k is not None:  # from here on the softmax and its sums read k numbers per row, not the vocabulary
        logits, ids = torch.topk(logits, min(top_k, logits.size(-1)))
    # divided after top_k: the same k tokens at any temperature (a huge one would round every logit to 0, and
    # top_k would then keep the first ids), and k numbers to divide instead of the vocabulary
    if temperature != 1.0:  # the top logit shifted to 0 first: a tiny temperature gives -inf, never inf - inf = nan
        logits = (logits - logits.amax(dim=-1, keepdim=True)) / temperature
    if top_p is not None and top_p < 1.0:
        if ids is None:
            logits, ids = torch.sort(logits, dim=-1, descending=True)
        probs = F.softmax(logits, dim=-1)
        # drop a token once the more likely ones before it already reach top_p (the first always stays)
        logits = logits.masked_fill(probs.cumsum(dim=-1) - probs >= top_p, -float("inf"))
    probs = F.softmax(logits, dim=-1)
    # inverse-CDF sampling: one uniform number per row (torch.multinomial draws one per vocabulary entry)
    cdf = probs.cumsum(dim=-1)
    u = torch.rand(cdf.size(0), 1, device=cdf.device, generator=generator) * cdf[:, -1:]  # below the total
    # the first candidate whose cumulative probability exceeds u: never one of probability 0
    choice = torch.searchsorted(cdf, u, right=True).clamp_(max=cdf.size(-1) - 1)  # (B, 1)
    return choice if ids is None else ids.gather(-1, choice)
