"""
Where the model runs and in what precision, chosen in one place for every script.

    from device import pick_device, autocast_dtype, autocast
    device = pick_device("auto")                        # "cuda:0", "mps" or "cpu"
    dtype = autocast_dtype(device.split(":")[0], "auto")  # bfloat16 where the device computes it natively
    with autocast(device.split(":")[0], dtype):
        logits, loss = model(x, y)
"""

import ctypes
import os
from contextlib import contextmanager, nullcontext

import torch

from errors import one_line

DTYPES = ("auto", "bfloat16", "float32")  # the choices of every script's --dtype


def pick_device(name: str, local_rank: int = 0) -> str:
    """"auto" -> the best available of cuda, mps, cpu; a named device must be available. Under torchrun each
    process takes the GPU of its local rank."""
    if name not in ("auto", "cuda", "mps", "cpu"):
        raise SystemExit(f"error: --device must be auto, cuda, mps or cpu, got {name!r}")
    if name == "mps" and not torch.backends.mps.is_available():
        built = torch.backends.mps.is_built()
        raise SystemExit("error: --device mps, but MPS is not available" +
                         ("" if built else f": this torch ({torch.__version__}) was built without it"))
    if name == "auto":
        if torch.cuda.is_available():
            name = "cuda"
        elif torch.backends.mps.is_available():
            name = "mps"
        else:
            name = "cpu"
    if name == "cuda":
        if not torch.cuda.is_available():
            why = ("no CUDA device is visible (its driver? CUDA_VISIBLE_DEVICES?)" if torch.backends.cuda.is_built()
                   else f"this torch ({torch.__version__}) was built without CUDA: install a CUDA build of it")
            raise SystemExit(f"error: --device cuda, but {why}")
        if local_rank >= torch.cuda.device_count():
            raise SystemExit(f"error: process {local_rank} of this machine has no GPU of its own: the machine has "
                             f"{torch.cuda.device_count()}, start at most that many (--nproc_per_node)")
        name = f"cuda:{local_rank}"  # one device per process
        torch.cuda.set_device(name)
    return name


def autocast_dtype(device_type: str, dtype: str) -> torch.dtype:
    """--dtype -> the autocast dtype: "auto" is bfloat16 where the device computes it natively, else float32
    (autocast off: bfloat16 emulated in software is slower than float32)."""
    if dtype == "float32":
        return torch.float32
    if dtype == "bfloat16":
        return torch.bfloat16
    return torch.bfloat16 if native_bf16(device_type) else torch.float32


def native_bf16(device_type: str) -> bool:
    """Whether the device computes bfloat16 in hardware: an NVIDIA GPU since Ampere (torch's plain
    is_bf16_supported() also says yes for a V100 or T4, which emulate it), a CPU with AVX-512 BF16 or AMX."""
    if device_type == "cuda":
        return torch.cuda.is_bf16_supported(including_emulation=False)
    if device_type == "cpu":
        return torch.ops.mkldnn._is_mkldnn_bf16_supported()
    return False


def autocast(device_type: str, dtype: torch.dtype):
    """Mixed precision for the block inside it: matmuls in dtype, reductions in float32. float32: nothing."""
    if dtype == torch.float32:
        return nullcontext()
    return torch.autocast(device_type=device_type, dtype=dtype)


def to_device(t: torch.Tensor, device: str) -> torch.Tensor:
    """A batch in host memory, on device; to a GPU through pinned memory, so that the copy runs while it computes."""
    if device.startswith("cuda"):
        return t.pin_memory().to(device, non_blocking=True)
    return t.to(device)


def synchronize(device: str) -> None:
    """Wait for the work queued on a GPU (CUDA or Apple's MPS), so that a timing counts it; a CPU has none."""
    device_type = device.split(":")[0]
    if device_type in ("cuda", "mps"):
        torch.get_device_module(device_type).synchronize()


def compiled(module, device: str, dtype: torch.dtype):
    """torch.compile(module), for forward passes on device under autocast in dtype, with compile_options."""
    return torch.compile(module, options=compile_options(device, dtype) or None)


def compile_options(device: str, dtype: torch.dtype) -> dict:
    """inductor's settings for a model compiled for device and dtype. On a CPU in bfloat16, 256-bit vector code
    (AVX2) where it would write 512-bit code (AVX-512): with torch 2.13 its AVX-512 code of a bfloat16 block
    computed wrong values (one transpose's output was half garbage), and the `seed` model's gradients came
    out NaN on an Intel Xeon with AMX (and with ATEN_CPU_CAPABILITY=avx2 or avx512 too, left to torch's
    choice). Its AVX2 code gives the eager gradients. See docs/speed.md."""
    if not (device.startswith("cpu") and dtype == torch.bfloat16):
        return {}
    from torch._inductor import cpu_vec_isa  # the compiler's own: imported only to compile
    widths = {isa.bit_width() for isa in cpu_vec_isa.valid_vec_isa_list()}
    return {"cpp.simdlen": 256} if 512 in widths and 256 in widths else {}


@contextmanager
def varying_shapes(device_type: str):
    """Attention for calls whose shapes change from one call to the next: HellaSwag's batches, each of its own
    length, and the KV cache, one key more every token. On CUDA it turns cuDNN's attention off and leaves the
    other backends as they are: PyTorch prefers cuDNN's on Hopper GPUs in bfloat16, but it builds a plan for
    every new shape (on an H200 the full HellaSwag took 15.3 s with it, 3.4-4.1 s without). Elsewhere: nothing."""
    if device_type != "cuda":
        yield
        return
    was_on = torch.backends.cuda.cudnn_sdp_enabled()
    torch.backends.cuda.enable_cudnn_sdp(False)
    try:
        yield
    finally:
        torch.backends.cuda.enable_cudnn_sdp(was_on)


@contextmanager
def out_of_memory_in_one_line(where: str):
    """The allocator's error for what a user asked (the weights of a model too large for `where`: this machine,
    a GPU) as one line of error, not its traceback."""
    try:
        yield
    except RuntimeError as e:  # torch.OutOfMemoryError (a GPU) is one too
        if not (isinstance(e, torch.OutOfMemoryError) or "DefaultCPUAllocator" in str(e)):
            raise
        raise SystemExit(f"error: not enough memory on {where} for the model's weights: {one_line(e, limit=200)}") from None


def host_memory() -> int:
    """This machine's memory in bytes; where the OS doesn't say (Windows), more than any model needs."""
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (AttributeError, ValueError, OSError):
        return 2 ** 63


def configure_for_training(device_type: str) -> None:
    """Per-device settings of a training run: TF32 matmuls on CUDA, a malloc that keeps freed memory on CPU."""
    if device_type == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = True  # float32 matmuls (outside autocast) on tensor cores
        torch.backends.cudnn.allow_tf32 = True
    if device_type == "cpu":
        keep_freed_memory()


def keep_freed_memory() -> None:
    """Let glibc keep freed memory for the next allocation instead of giving it back to the OS at once.

    A CPU training step allocates and frees the same large tensors every micro-step (the head's chunk of
    logits alone is 512 x 50,304 floats, 103 MB in float32). glibc serves blocks above 32 MB with mmap and
    unmaps them when freed, so every micro-step the kernel hands out those pages again, zeroed: ~210k page
    faults a `seed` step at 4 x 512, 13-15% of its time in eager bfloat16 on a 2-core CPU (1.29-1.34 against
    1.11-1.17 s a step; ~7k faults with this). Raising the mmap and trim thresholds keeps the blocks in the
    heap for reuse. The price could be memory, since freed blocks stay with the process; that step's peak
    resident set is ~0.93 GB either way. No effect outside glibc.
    """
    try:
        libc = ctypes.CDLL("libc.so.6")
    except OSError:
        return  # not glibc (macOS, musl, Windows)
    M_TRIM_THRESHOLD, M_MMAP_THRESHOLD = -1, -3  # mallopt's parameter numbers, from glibc's malloc.h
    libc.mallopt(M_MMAP_THRESHOLD, 1 << 30)  # the largest glibc allows on 64-bit: 32 MB..1 GB blocks from the heap
    libc.mallopt(M_TRIM_THRESHOLD, (1 << 31) - 1)  # never shrink the heap on a free
