"""
Muon for the hidden matrices, AdamW for the rest: the optimizer of `train_gpt.py --recipe modern`.

Muon (Keller Jordan, 2024, "Muon: an optimizer for hidden layers in neural networks") takes SGD's
momentum of a weight matrix's gradient and replaces it by the nearest semi-orthogonal matrix, U V^T for
the momentum's SVD U S V^T, so that every direction of the update moves by the same amount instead of
the few largest ones dominating. The SVD is too slow for every step; five iterations of a quintic
Newton-Schulz polynomial get the singular values near 1 (between about 0.7 and 1.2, which works as well)
using only matmuls. Embeddings, the output head, biases and LayerNorm gains are not hidden matrices and
keep AdamW.

    from optim import MuonAdamW
    opt = MuonAdamW([{"params": matrices, "muon": True, "lr": 0.02},
                     {"params": others, "muon": False, "lr": 6e-3}])
"""

import torch

NS_COEFFICIENTS = (3.4445, -4.7750, 2.0315)  # the quintic of Jordan (2024): steep at 0, so small values grow fast


def orthogonalize(G: torch.Tensor, steps: int = 5, coefficients: tuple[float, float, float] = NS_COEFFICIENTS,
                  eps: float = 1e-7, dtype: torch.dtype | None = None) -> torch.Tensor:
    """An approximately semi-orthogonal matrix with G's singular vectors: U phi(S) V^T for G = U S V^T.

    G: (..., m, n), a batch of matrices each done on its own. Each is scaled to Frobenius norm 1 (so its
    singular values are at most 1), then `steps` times X <- a X + b (X X^T) X + c (X X^T)^2 X, which maps
    every singular value s to a s + b s^3 + c s^5 and leaves the singular vectors alone. dtype: compute in
    it (bfloat16 on GPUs, as in the reference; float32 by default), the result in G's dtype.
    """
    a, b, c = coefficients
    X = G.to(dtype or torch.float32)
    wide = X.size(-2) <= X.size(-1)
    if not wide:
        X = X.mT  # X X^T is then the smaller of the two Gram matrices
    X = X / (X.norm(dim=(-2, -1), keepdim=True) + eps)
    for _ in range(steps):
        A = X @ X.mT
        B = b * A + c * A @ A
        X = a * X + B @ X
    if not wide:
        X = X.mT
    return X.to(G.dtype)


class MuonAdamW(torch.optim.Optimizer):
    """Muon on the parameter groups marked "muon": True (2-D weights), AdamW on the others.

    A Muon group may have "split": k, a weight made of k matrices stacked along its rows (the query, key
    and value projections in one c_attn), each orthogonalised on its own. Weight decay is decoupled in
    both: each step multiplies the weights by 1 - lr * weight_decay. One optimizer object, so that
    checkpoints, learning-rate schedules and gradient clipping treat it like torch.optim.AdamW.
    """

    def __init__(self, params, lr: float = 0.02, momentum: float = 0.95, nesterov: bool = True,
                 ns_steps: int = 5, betas: tuple[float, float] = (0.9, 0.95), eps: float = 1e-8,
                 weight_decay: float = 0.0, ns_dtype: torch.dtype | None = None):
        defaults = dict(lr=lr, momentum=momentum, nesterov=nesterov, ns_steps=ns_steps, betas=betas, eps=eps,
                        weight_decay=weight_decay, muon=False, split=1)
        super().__init__(params, defaults)
        self.ns_dtype = ns_dtype
        for group in self.param_groups:
            if group["muon"] and any(p.dim() != 2 for p in group["params"]):
                raise ValueError("Muon takes 2-D weight matrices only; give the other parameters to AdamW")

    @torch.no_grad()
    def step(self, closure=None):
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for group in self.param_groups:
            if group["muon"]:
                self._muon(group)
            else:
                self._adamw(group)
        return loss

    def _muon(self, group: dict) -> None:
        lr, mu, k = group["lr"], group["momentum"], group["split"]
        for p in group["params"]:
            if p.grad is None:
                continue
            state = self.state[p]
            if not state:
                state["momentum_buffer"] = torch.zeros_like(p.grad)
            buf = state["momentum_buffer"]
            buf.lerp_(p.grad, 1 - mu)  # buf = mu * buf + (1 - mu) * grad
            g = p.grad.lerp(buf, mu) if group["nesterov"] else buf  # Nesterov: look one step ahead
            rows, cols = p.size(0) // k, p.size(1)
            update = orthogonalize(g.view(k, rows, cols), group["ns_steps"], dtype=self.ns_dtype).view_as(p)
            # an orthogonal (rows, cols) matrix has RMS entry 1/sqrt(max(rows, cols)): scale tall ones up, so
            # the update's size per entry doesn't depend on the matrix's shape (Jordan, 2024)
            scale = max(1.0, rows / cols) ** 0.5
            p.mul_(1 - lr * group["weight_decay"])
            p.add_(update, alpha=-lr * scale)

    def _adamw(self, group: dict) -> None:
        lr, (beta1, beta2), eps = group["lr"], group["betas"], group["eps"]
        for p in group["params"]:
            if p.grad is None:
                continue
            state = self.state[p]
            if not state:
                state["step"] = torch.zeros((), dtype=torch.float32)
                state["exp_avg"] = torch.zeros_like(p)
                state["exp_avg_sq"] = torch.zeros_like(p)
            state["step"] += 1
            t = state["step"].item()
            state["exp_avg"].lerp_(p.grad, 1 - beta1)
            state["exp_avg_sq"].mul_(beta2).addcmul_(p.grad, p.grad, value=1 - beta2)
            denom = (state["exp_avg_sq"] / (1 - beta2 ** t)).sqrt_().add_(eps)
            p.mul_(1 - lr * group["weight_decay"])
            p.addcdiv_(state["exp_avg"], denom, value=-lr / (1 - beta1 ** t))
