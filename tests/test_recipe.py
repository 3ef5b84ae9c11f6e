"""python -m pytest tests/test_recipe.py -v

The modern recipe (train_gpt.py --recipe modern): Muon's orthogonalisation against a float64 SVD, its
optimizer step, the model options (rotary positions, QK-norm, ReLU², soft-capped logits, zero-initialised
projections), training, exact resume and the tools that read its checkpoints, and the errors where a
combination can't work. The same options through KV-cache sampling (test_generate.py), HellaSwag's packed
scoring (test_hellaswag.py), hand-written attention (test_model.py) and DDP (test_distributed.py).
"""

import re
import shutil

import pytest
import torch

import export_hf
import hellaswag
import train_gpt
from checkpoint import load_checkpoint, model_from_checkpoint, save_checkpoint
from conftest import HELLASWAG, MODERN, TINY, assert_same_run, metric, random_model, read_log, train
from model import GPT, GPTConfig
from optim import NS_COEFFICIENTS, MuonAdamW, orthogonalize
from train_gpt import model_config, preset_config

# -----------------------------------------------------------------------------
# Muon


def svd_reference(G: torch.Tensor, steps: int, coefficients, eps: float = 1e-7) -> torch.Tensor:
    """What the Newton-Schulz iteration computes, by way of the SVD in float64: U phi(S) V^T, phi the
    iteration's polynomial applied `steps` times to the singular values of G / (||G||_F + eps)."""
    a, b, c = coefficients
    U, S, Vh = torch.linalg.svd(G.double(), full_matrices=False)
    s = S / (G.double().norm(dim=(-2, -1), keepdim=True).squeeze(-1) + eps)
    for _ in range(steps):
        s = a * s + b * s**3 + c * s**5
    return U @ torch.diag_embed(s) @ Vh


@pytest.mark.parametrize("shape", [(32, 32), (24, 64), (64, 24), (3, 16, 48)])
def test_orthogonalize_matches_svd_reference(shape):
    """Newton-Schulz keeps G's singular vectors and maps its singular values by the polynomial: equal to
    the SVD-built reference to 1e-10 in float64 and 1e-5 in float32 (entries of size ~0.1)."""
    g = torch.Generator().manual_seed(0)
    G = torch.randn(shape, generator=g, dtype=torch.float64)
    ref = svd_reference(G, 5, NS_COEFFICIENTS)
    torch.testing.assert_close(orthogonalize(G, 5, dtype=torch.float64), ref, rtol=0, atol=1e-10)
    torch.testing.assert_close(orthogonalize(G.float(), 5).double(), ref, rtol=0, atol=1e-5)
    # the point of it: all singular values near 1, from a spread of about 10x (Gaussian, this shape)
    s = torch.linalg.svdvals(orthogonalize(G.float(), 5).double())
    assert s.min() > 0.6 and s.max() < 1.25, s


def test_orthogonalize_converges_to_the_polar_factor():
    """With the classic cubic coefficients (1.5, -0.5, 0) iterated to convergence, the result is U V^T, the
    nearest semi-orthogonal matrix (to 1e-6 in float64)."""
    G = torch.randn(40, 24, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    U, _, Vh = torch.linalg.svd(G, full_matrices=False)
    X = orthogonalize(G, 60, (1.5, -0.5, 0.0), dtype=torch.float64)
    torch.testing.assert_close(X, U @ Vh, rtol=0, atol=1e-6)


def tiny_modern_model(seed: int = 0) -> GPT:
    torch.manual_seed(seed)
    return GPT(GPTConfig(**{**vars(TINY), **MODERN}))


def test_muon_update_is_orthogonal_and_lowers_the_loss():
    """One step moves each hidden matrix by lr x the orthogonalised gradient, q, k and v each on its own
    (tall matrices scaled by sqrt(rows / cols)); 30 steps on one batch cut the loss by more than 40%."""
    cfg = train_gpt.apply_recipe(train_gpt.preset_config("tiny"), "modern")
    model = random_model(GPTConfig(**{**vars(TINY), **MODERN})).train()  # zero-initialised projections would give q, k and v no gradient yet
    opt = train_gpt.configure_optimizer(model, cfg, "cpu")
    assert isinstance(opt, MuonAdamW)
    muon = {id(p) for g in opt.param_groups if g["muon"] for p in g["params"]}
    names = {n for n, p in model.named_parameters() if id(p) in muon}
    assert names == {f"transformer.h.{i}.{m}.weight" for i in range(2)
                     for m in ("attn.c_attn", "attn.c_proj", "mlp.c_fc", "mlp.c_proj")}
    x = torch.randint(0, 50304, (4, 64), generator=torch.Generator().manual_seed(0))
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    _, loss0 = model(x[:, :-1], x[:, 1:])
    loss0.backward()
    for g in opt.param_groups:
        g["lr"] = cfg.max_lr * g.get("lr_scale", 1.0)
    opt.step()
    W = dict(model.named_parameters())
    for name, k in (("transformer.h.0.attn.c_attn.weight", 3), ("transformer.h.1.mlp.c_fc.weight", 1)):
        step = (before[name] - W[name].detach()) / cfg.muon_lr  # (rows, cols)
        grad = W[name].grad.view(k, -1, 32)  # the first momentum is a multiple of the gradient
        scale = 2.0 if k == 1 else 1.0  # c_fc is 128 x 32: sqrt(128 / 32)
        torch.testing.assert_close(step.view(k, -1, 32), scale * orthogonalize(grad), rtol=0, atol=1e-5)
        s = torch.linalg.svdvals((step.view(k, -1, 32) / scale).double())
        assert s.median() > 0.7 and s.max() < 1.25, (name, s)  # most directions move by about the same
    for _ in range(29):
        opt.zero_grad()
        _, loss = model(x[:, :-1], x[:, 1:])
        loss.backward()
        opt.step()
    assert loss.item() < 0.6 * loss0.item(), (loss0.item(), loss.item())


def test_muon_takes_matrices_only():
    """A 1-D parameter in a Muon group is a ValueError: Muon orthogonalises matrices."""
    with pytest.raises(ValueError, match="2-D weight matrices only"):
        MuonAdamW([{"params": [torch.nn.Parameter(torch.zeros(3))], "muon": True}])

# -----------------------------------------------------------------------------
# the model's options


def test_modern_seed_model_size():
    """--recipe modern keeps the seed preset's size within 10% (it drops the position table)."""
    gpt2 = GPT(model_config(preset_config("seed"))).num_params()
    cfg = train_gpt.apply_recipe(train_gpt.preset_config("seed"), "modern")
    modern = GPT(train_gpt.model_config(cfg)).num_params()
    assert modern == gpt2 - 1024 * 256 and abs(modern / gpt2 - 1) < 0.1


def test_modern_options_change_the_function():
    """Each option alone changes the logits of the GPT-2 model with the same weights (none is a no-op)."""
    torch.manual_seed(0)
    base = GPT(TINY)
    x = torch.randint(0, 50304, (2, 20))
    ref = base(x)[0]
    for option, value in [("rope", True), ("qk_norm", True), ("mlp", "relu2"), ("logit_softcap", 2.0)]:
        model = GPT(GPTConfig(**{**vars(TINY), option: value}))
        sd = {k: v for k, v in base.state_dict().items() if not (option == "rope" and "wpe" in k)}
        model.load_state_dict(sd)
        assert not torch.allclose(model(x)[0], ref, atol=1e-4), option
    assert GPT(GPTConfig(**{**vars(TINY), "logit_softcap": 2.0}))(x)[0].abs().max() <= 2.0


def test_rotary_attention_depends_on_relative_position():
    """With rotary positions and no position table, shifting every position by the same amount changes nothing."""
    model = tiny_modern_model().eval()
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 0.05)  # the zero-initialised projections too
        x = torch.randint(0, 50304, (2, 16))
        pos = torch.arange(16)
        a = model.hidden_states(x, pos=pos.expand(2, 16), attn_mask=torch.ones(2, 1, 16, 16, dtype=torch.bool).tril())
        b = model.hidden_states(x, pos=(pos + 20).expand(2, 16),
                                attn_mask=torch.ones(2, 1, 16, 16, dtype=torch.bool).tril())
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-4)
        torch.testing.assert_close(a, model.hidden_states(x), rtol=1e-5, atol=1e-5)  # (T,) positions: the same


def test_zero_init_projections_start_as_identity_blocks():
    """With zero_init_proj, the projections into the residual stream start at zero, the rest at random."""
    model = tiny_modern_model()
    for block in model.transformer.h:
        assert not block.attn.c_proj.weight.any() and not block.mlp.c_proj.weight.any()
        assert block.attn.c_attn.weight.std() > 0.01


# -----------------------------------------------------------------------------
# training with --recipe modern


def test_recipe_sets_its_flags_and_flags_override_it():
    """--recipe modern sets its fields, keeps the preset's size and steps; flags given override it."""
    cfg = train_gpt.parse_config(["--recipe", "modern", "--muon-lr", "0.05", "--no-qk-norm"])
    assert (cfg.rope, cfg.qk_norm, cfg.mlp, cfg.optimizer, cfg.schedule, cfg.muon_lr) == (
        True, False, "relu2", "muon", "wsd", 0.05)
    assert (cfg.n_layer, cfg.max_steps, cfg.total_batch_size) == (4, 12207, 32768)  # the preset's own
    assert train_gpt.parse_config([]) == train_gpt.TrainConfig()  # the default is the reference run, unchanged


@pytest.mark.parametrize("flags,message", [
    (["--recipe", "modern", "--fsdp"], "--optimizer muon orthogonalises whole weight matrices"),
    (["--recipe", "modern", "--init-from", "gpt2"], "--init-from gpt2 loads GPT-2's architecture"),
    (["--decay-frac", "0"], "--decay-frac must be in \\(0, 1\\], got 0.0"),
])
def test_recipe_flag_errors_are_one_line(flags, message):
    """Combinations that can't work are refused with one line naming the flags."""
    with pytest.raises(SystemExit) as e:
        train_gpt.parse_config(flags)
    assert "\n" not in str(e.value) and re.match(rf"error: .*{message}", str(e.value)), str(e.value)


def test_unknown_mlp_is_refused_by_argparse(capsys):
    """--mlp takes gelu or relu2 only: argparse names the bad choice."""
    with pytest.raises(SystemExit):
        train_gpt.parse_config(["--mlp", "swish"])
    assert "invalid choice: 'swish'" in capsys.readouterr().err


def test_wsd_schedule():
    """warmup-stable-decay: linear warmup, max_lr until the decay fraction, then linear down to min_lr."""
    cfg = train_gpt.TrainConfig(schedule="wsd", max_steps=100, warmup_steps=10, decay_frac=0.4, max_lr=1.0, min_lr=0.0)
    lrs = [train_gpt.get_lr(s, cfg) for s in range(100)]
    assert lrs[0] == 0.1 and lrs[9] == 1.0
    assert all(lr == 1.0 for lr in lrs[10:60])  # stable
    assert lrs[60] == 1.0 and lrs[61] < 1.0 and abs(lrs[80] - 0.5) < 1e-12 and lrs[99] == pytest.approx(0.025)
    assert all(a >= b for a, b in zip(lrs[60:], lrs[61:]))


MODERN_FLAGS = ["--recipe", "modern", "--logit-softcap", "15", "--max-steps", "12", "--warmup-steps", "2",
                "--checkpoint-every", "6", "--val-every", "4", "--sample-every", "12", "--num-samples", "1"]


@pytest.fixture(scope="module")
def modern_run(corpus_shards, tmp_path_factory):
    """12 steps of the tiny preset with --recipe modern and soft-capped logits; checkpoints at 6 and 12."""
    out = tmp_path_factory.mktemp("modern")
    train(corpus_shards, out, *MODERN_FLAGS)
    return out


def test_modern_run_learns(modern_run):
    """On real text, the modern recipe's val loss falls by more than 0.4 in 12 steps."""
    val = metric(read_log(modern_run), "val_loss")
    assert sorted(val) == [0, 4, 8, 12] and val[12] < val[0] - 0.4, val


def test_modern_resume_is_the_same_run(corpus_shards, modern_run, tmp_path):
    """A modern run stopped at a checkpoint and resumed is the uninterrupted run, bit for bit, Muon's momentum
    included."""
    import shutil
    shutil.copytree(modern_run, tmp_path / "b")
    (tmp_path / "b" / "ckpt_000012.pt").unlink()  # as if stopped after step 6
    train(corpus_shards, tmp_path / "b", *MODERN_FLAGS, "--resume")
    assert torch.load(modern_run / "ckpt_000012.pt", weights_only=True)["optimizer"]["param_groups"][0]["muon"]
    assert_same_run(modern_run, tmp_path / "b", 12)


def test_modern_checkpoint_serves_every_tool(corpus_shards, modern_run, tmp_path, capfd):
    """generate.py and hellaswag.py read the modern checkpoint; export_hf.py refuses it with one line; a
    --recipe gpt2 resume of it is refused, naming the flags that differ."""
    import generate
    samples = generate.main(["--checkpoint", str(modern_run), "--prompt", "Hello", "--max-new-tokens", "5",
                             "--num-samples", "1", "--seed", "1", "--device", "cpu"])
    assert len(samples) == 1 and samples[0].startswith("Hello") and len(samples[0]) > len("Hello")
    hellaswag.main(["--checkpoint", str(modern_run), "--data", str(HELLASWAG), "--limit", "8", "--device", "cpu"])
    assert "acc_norm" in capfd.readouterr().out
    with pytest.raises(SystemExit, match=r"^error: .* is not a GPT-2 model \(rotary positions, QK-norm, a ReLU² MLP, "
                                         r"soft-capped logits: --recipe modern\)"):
        export_hf.main(["--checkpoint", str(modern_run), "--out", str(tmp_path / "hf")])
    import shutil
    shutil.copytree(modern_run, tmp_path / "run")
    with pytest.raises(SystemExit, match="--rope True \\(now False\\), --qk-norm True \\(now False\\)"):
        train(corpus_shards, tmp_path / "run", "--max-steps", "20", "--resume")


def test_old_checkpoints_still_load(corpus_shards, tmp_path):
    """A checkpoint written before the recipe's fields existed is a GPT-2 one: it loads, and resumes as the
    same run, bit for bit."""
    flags = ("--max-steps", "6", "--warmup-steps", "1", "--checkpoint-every", "2", "--val-every", "0")
    train(corpus_shards, tmp_path / "ref", *flags)
    shutil.copytree(tmp_path / "ref", tmp_path / "run")
    (tmp_path / "run" / "ckpt_000006.pt").unlink()
    path = tmp_path / "run" / "ckpt_000004.pt"
    ckpt = load_checkpoint(str(path))
    for k in ("recipe", "rope", "qk_norm", "mlp", "logit_softcap", "zero_init_proj", "optimizer", "muon_lr",
              "schedule", "decay_frac"):
        del ckpt["config"][k]
    save_checkpoint(str(path), ckpt)
    assert model_from_checkpoint(load_checkpoint(str(path))).config.is_gpt2
    train(corpus_shards, tmp_path / "run", *flags, "--resume")
    assert_same_run(tmp_path / "ref", tmp_path / "run", 6)
