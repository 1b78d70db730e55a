"""The host CPU's vector features, which some of jaxcnn's CPU plans depend on.

Read from NumPy's runtime CPU feature table, so nothing parses ``/proc``: the batch slices'
rows (:func:`jaxcnn.cpu.slice_rows`) and the input gradient of a convolution with few input
channels (:func:`jaxcnn.cpu.plan_for`) follow whether the cores have AVX-512.
"""

from __future__ import annotations

import importlib
import types
from collections.abc import Mapping

__all__ = ["cpu_features", "has_avx512"]


def cpu_features() -> Mapping[str, bool]:
    """NumPy's runtime CPU feature table (``numpy._core`` in NumPy 2, ``numpy.core`` in 1.x),
    read-only; empty where neither has it, which means the narrower vectors."""
    for module in ("numpy._core._multiarray_umath", "numpy.core._multiarray_umath"):
        try:
            return types.MappingProxyType(importlib.import_module(module).__cpu_features__)
        except (ImportError, AttributeError):
            continue
    return {}


def has_avx512(features: Mapping[str, bool] | None = None) -> bool:
    """Whether the cores have AVX-512 (``features``: a table like :func:`cpu_features`'s,
    the host's when None)."""
    return bool((cpu_features() if features is None else features).get("AVX512F"))
