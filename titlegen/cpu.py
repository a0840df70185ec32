"""The process's set-up: seeds, and the process-wide CPU settings that training and generation run faster with.

Each CPU setting is a switch of `titlegen.arguments.RunArguments`; bench/README.md measures what each one gains.
"""

from __future__ import annotations


def configure_cpu(flush_denormal: bool = True, keep_freed_memory: bool = False) -> None:
    """Applies the CPU settings: denormal floats flushed to zero, and optionally `keep_freed_memory_in_process`.

    Arithmetic on denormal floats runs many times slower on x86 CPUs than on normal ones, and training can
    produce them; flushing them to zero changes results only below float32's normal range.
    """
    import torch

    if flush_denormal:
        torch.set_flush_denormal(True)
    if keep_freed_memory:
        keep_freed_memory_in_process()


def keep_freed_memory_in_process() -> bool:
    """Makes glibc's malloc keep freed memory for reuse, instead of handing large blocks back to the system.

    glibc maps every block above its mmap threshold (at most 32 MiB) freshly from the system and unmaps it
    when freed, and the kernel zeroes each page of a fresh mapping at its first touch. A training step
    allocates and frees several such blocks (the logits, the embedding and output-layer gradients of a large
    vocabulary), so it would pay for zeroing them at every step. With this setting the blocks come from the
    heap, which keeps up to 2 GiB of free memory instead of returning it.

    Returns:
        Whether the setting took effect: False where the C library is not glibc (e.g. macOS, musl).
    """
    import ctypes
    import platform

    if platform.libc_ver()[0] != "glibc":
        return False
    libc = ctypes.CDLL(None)  # the C library the interpreter runs on
    m_trim_threshold, m_mmap_max = -1, -4  # mallopt parameters, from glibc's malloc.h
    return bool(libc.mallopt(m_mmap_max, 0)) and bool(libc.mallopt(m_trim_threshold, 2**31 - 1))


def configure_process(seed: int, flush_denormal: bool = True, keep_freed_memory: bool = False) -> str:
    """Seeds every random generator and applies the CPU switches when there is no GPU.

    Returns:
        The device to run on: ``cuda`` or ``cpu``.
    """
    import torch
    from transformers import set_seed

    device = "cuda" if torch.cuda.is_available() else "cpu"
    if device == "cpu":
        configure_cpu(flush_denormal, keep_freed_memory)
    set_seed(seed)
    return device
