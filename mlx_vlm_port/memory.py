"""The memory this process can still take, the one rule behind both memory decisions:
how many rows a batch holds (batch_memory.py) and whether the CPU backend holds
float32 copies of quantized weights (backends/cpu)."""

from __future__ import annotations

import os

import mlx.core as mx


def available_memory() -> int:
    """Bytes the process can still take without swapping: on a Mac, Metal's recommended
    working set less MLX's active memory; on Linux, MemAvailable (free memory plus the
    page cache the kernel can drop, where a checkpoint just read lies: free pages alone
    leave it out); elsewhere the free pages, or a quarter of the physical memory where
    the system does not say."""
    info = mx.device_info()
    if "max_recommended_working_set_size" in info:
        return int(info["max_recommended_working_set_size"]) - mx.get_active_memory()
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    try:
        return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (ValueError, OSError, AttributeError):  # macOS has no SC_AVPHYS_PAGES
        return os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE") // 4
