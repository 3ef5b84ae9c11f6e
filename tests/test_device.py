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
