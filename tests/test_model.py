"""python -m pytest tests/test_model.py -v"""

import math

import pytest
import torch

from model import GPT, PRESETS, GPTConfig

TINY = PRESETS["tiny"]


def test_output_shapes():
    """forward gives (B, T, vocab) logits, a scalar loss with targets, None without."""
    model = GPT(TINY)
    idx = torch.randint(0, 50257, (3, 17))
    logits, loss = model(idx, idx)
    assert logits.shape == (3, 17, TINY.vocab_size)
    assert loss.shape == ()
    assert model(idx)[1] is None


def test_loss_at_init_is_uniform():
    """At initialisation the model is ~uniform over the vocabulary: loss ~ ln(50304)."""
    model = GPT(PRESETS["seed"])
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
    assert GPT(PRESETS[name]).num_params() == count


def test_gpt2_124m_count_at_original_vocab():
    """At GPT-2's own vocabulary of 50,257 the gpt2 preset is OpenAI's 124,439,808 parameters."""
    assert GPT(GPTConfig(vocab_size=50257)).num_params() == 124_439_808


def test_residual_projections_scaled_at_init():
    """c_proj weights start with std 0.02/sqrt(2 n_layer); other matrices with 0.02."""
    model = GPT(PRESETS["seed"])
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


def test_matches_transformers_gpt2(tmp_path):
    """A random HF GPT2LMHeadModel, saved and read back by GPT.from_pretrained, gives the same logits (fp32)."""
    transformers = pytest.importorskip("transformers")
    hf_config = transformers.GPT2Config(vocab_size=512, n_positions=64, n_embd=32, n_layer=2, n_head=4,
                                        activation_function="gelu_new", resid_pdrop=0.0, embd_pdrop=0.0,
                                        attn_pdrop=0.0, bos_token_id=0, eos_token_id=0)
    hf = transformers.GPT2LMHeadModel(hf_config).eval()
    with torch.no_grad():  # biases start at 0 and LayerNorms at 1: move them, or a mix-up of them goes unseen
        for p in hf.parameters():
            p.add_(0.02 * torch.randn_like(p))
    hf.save_pretrained(tmp_path)
    ours = GPT.from_pretrained(str(tmp_path)).eval()
    assert ours.config == GPTConfig(block_size=64, vocab_size=512, n_layer=2, n_head=4, n_embd=32)
    idx = torch.randint(0, 512, (2, 64))
    with torch.no_grad():
        torch.testing.assert_close(ours(idx)[0], hf(idx).logits, rtol=1e-5, atol=1e-5)


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
