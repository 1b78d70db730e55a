"""Argument checks shared by every module: what counts as an integer or a real number.

NumPy scalars count (``np.int64(3)`` is an int, ``np.float32(0.1)`` a real), bools do not.
Plain Python and NumPy only: modules that stay free of JAX use them too.
"""

from __future__ import annotations

import numbers

import numpy as np

__all__ = ["is_int", "is_real"]


def is_int(v: object) -> bool:
    """Whether ``v`` is an integer, Python's or NumPy's (``np.int64``), but not a bool."""
    return isinstance(v, numbers.Integral) and not isinstance(v, bool | np.bool_)


def is_real(v: object) -> bool:
    """Whether ``v`` is a real number, Python's or NumPy's (``np.float32``), but not a bool."""
    return isinstance(v, numbers.Real) and not isinstance(v, bool | np.bool_)
