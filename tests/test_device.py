"""python -m pytest tests/test_device.py -v

The device and dtype every script picks from --device and --dtype (device.py): bfloat16 only where the
hardware computes it, and one line naming the cause when the device asked for isn't there. The tests run on
a CPU build of torch; what a GPU would answer is put in torch's place.
"""

import pytest
import torch

import device


@pytest.mark.parametrize("card, want", [("ampere", torch.bfloat16), ("volta", torch.float32)])
def test_auto_dtype_is_bfloat16_only_on_gpus_that_compute_it(monkeypatch, card, want):
    """--dtype auto on CUDA is bfloat16 on an Ampere or later GPU and float32 on a V100 or T4, for which torch's
    is_bf16_supported() also says yes by default (it counts emulation); --dtype bfloat16 is bfloat16 on both."""
    monkeypatch.setattr(torch.cuda, "is_bf16_supported",
                        lambda including_emulation=True: card == "ampere" or including_emulation)
    assert device.autocast_dtype("cuda", "auto") == want
    assert device.autocast_dtype("cuda", "bfloat16") == torch.bfloat16
    assert device.autocast_dtype("cuda", "float32") == torch.float32
    assert device.autocast_dtype("mps", "auto") == torch.float32


@pytest.mark.parametrize("built, cause", [(False, "this torch ({}) was built without CUDA: install a CUDA build of it"),
                                          (True, "no CUDA device is visible (its driver? CUDA_VISIBLE_DEVICES?)")])
def test_missing_cuda_names_its_cause(monkeypatch, built, cause):
    """--device cuda without a GPU: one line saying whether torch lacks CUDA (a CPU build, as pip installs by
    default) or the machine shows no GPU."""
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr(torch.backends.cuda, "is_built", lambda: built)
    with pytest.raises(SystemExit) as e:
        device.pick_device("cuda")
    assert str(e.value) == "error: --device cuda, but " + cause.format(torch.__version__)


def test_auto_device_and_unknown_device(monkeypatch):
    """--device auto takes a GPU, then Apple's MPS, then the CPU; a device name we don't know is one line."""
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr(torch.backends.mps, "is_available", lambda: True)
    assert device.pick_device("auto") == "mps"
    monkeypatch.setattr(torch.backends.mps, "is_available", lambda: False)
    assert device.pick_device("auto") == "cpu"
    with pytest.raises(SystemExit) as e:
        device.pick_device("tpu")
    assert str(e.value) == "error: --device must be auto, cuda, mps or cpu, got 'tpu'"


@pytest.fixture
def inductor_config():
    """inductor's settings, its vector width unset as at the start of a process (and after the test)."""
    from torch._inductor import config
    with config.patch({"cpp.simdlen": None}):
        yield config


class FakeISA:
    """What inductor's list of the CPU's vector instruction sets holds, as far as device.compiled reads it."""

    def __init__(self, bits: int):
        self.bits = bits

    def bit_width(self) -> int:
        return self.bits


@pytest.mark.parametrize("widths, device_name, dtype, want", [
    ((512, 512, 256), "cpu", torch.bfloat16, {"cpp.simdlen": 256}),  # AVX-512 and AVX2: AVX2's code
    ((256,), "cpu", torch.bfloat16, {}),  # AVX2 only: as it is
    ((512, 256), "cpu", torch.float32, {}),  # float32's AVX-512 code is right
    ((512, 256), "cuda", torch.bfloat16, {}),  # not a CPU
])
def test_compile_options_limit_cpu_vectors_in_bfloat16_only(monkeypatch, widths, device_name, dtype, want):
    """device.compile_options asks inductor for 256-bit vectors on a CPU with 512-bit ones, in bfloat16 only."""
    from torch._inductor import cpu_vec_isa
    monkeypatch.setattr(cpu_vec_isa, "valid_vec_isa_list", lambda: [FakeISA(w) for w in widths])
    assert device.compile_options(device_name, dtype) == want


@pytest.mark.parametrize("capability", ["avx2", "avx512"])
def test_compile_options_hold_whatever_cpu_capability_is_chosen(monkeypatch, capability):
    """With ATEN_CPU_CAPABILITY set (which inductor follows) and torch's own vector width, the compiled gradients
    were NaN on the Xeon too: the 256-bit width applies all the same."""
    from torch._inductor import cpu_vec_isa
    monkeypatch.setenv("ATEN_CPU_CAPABILITY", capability)
    monkeypatch.setattr(cpu_vec_isa, "valid_vec_isa_list", lambda: [FakeISA(512), FakeISA(256)])
    assert device.compile_options("cpu", torch.bfloat16) == {"cpp.simdlen": 256}


@pytest.mark.slow
def test_compiled_bfloat16_gradients_equal_eager_on_this_cpu(inductor_config):
    """The tiny model through device.compiled, under bfloat16 autocast on this CPU: eager's loss and gradients
    within bfloat16's rounding. With torch 2.13's own settings the gradients were NaN on an Intel Xeon with AMX.
    The process's own settings are left as they were."""
    from model import GPT, GPTConfig
    torch.manual_seed(0)
    model = GPT(GPTConfig(block_size=64, n_layer=2, n_head=2, n_embd=32))
    x, y = torch.randint(0, 50257, (2, 64)), torch.randint(0, 50257, (2, 64))

    def loss_and_grads(fwd):
        model.zero_grad()
        with torch.autocast("cpu", torch.bfloat16):
            _, loss = fwd(x, y)
        loss.backward()
        return loss.item(), torch.cat([p.grad.flatten() for p in model.parameters()])

    loss, grads = loss_and_grads(model)
    loss_c, grads_c = loss_and_grads(device.compiled(model, "cpu", torch.bfloat16))
    assert abs(loss_c - loss) < 1e-3
    assert torch.isfinite(grads_c).all()
    assert (grads_c - grads).norm() / grads.norm() < 0.02, "the compiled gradients are not eager's"
    assert inductor_config.cpp.simdlen is None
