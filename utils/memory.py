"""Host memory: keep what a training step frees for the next step, as PyTorch's CUDA caching allocator does on a GPU.

glibc's malloc serves every block over 32 MB with its own mmap and gives it back to the kernel on free. A CPU step
of the airbench net at batch 1024 allocates activations of up to 252 MB (1024 x 64 x 31 x 31 floats): each comes
back as fresh pages that the kernel faults in and zeroes, about 0.75M page faults and 2.5 s of kernel time per step
on a 2-core machine. With no mmap and a high trim threshold the blocks stay in malloc's heap and are reused.
"""
import ctypes

M_TRIM_THRESHOLD, M_MMAP_MAX = -1, -4  # glibc's <malloc.h>
TRIM_THRESHOLD = 2**31 - 1  # mallopt takes an int: keep up to 2 GiB of freed memory at the top of the heap


def keep_freed_memory() -> bool:
    """Tell the C library's malloc to keep freed memory for reuse; True where it took the settings (glibc), False
    where the C library has no mallopt (macOS) or refuses them (musl)."""
    mallopt = getattr(ctypes.CDLL(None), "mallopt", None)
    return bool(mallopt) and bool(mallopt(M_MMAP_MAX, 0)) and bool(mallopt(M_TRIM_THRESHOLD, TRIM_THRESHOLD))
