"""Argument checks shared by every module: what counts as an integer, a real number or a key.

NumPy scalars count (``np.int64(3)`` is an int, ``np.float32(0.1)`` a real), bools do not.
Plain Python and NumPy only: modules that stay free of JAX use them too (:func:`is_key` imports
JAX only for a value whose dtype is not NumPy's, which only JAX makes).
"""

from __future__ import annotations

import numbers

import numpy as np

__all__ = ["is_int", "is_key", "is_real"]


def is_int(v: object) -> bool:
    """Whether ``v`` is an integer, Python's or NumPy's (``np.int64``), but not a bool."""
    return isinstance(v, numbers.Integral) and not isinstance(v, bool | np.bool_)


def is_real(v: object) -> bool:
    """Whether ``v`` is a real number, Python's or NumPy's (``np.float32``), but not a bool."""
    return isinstance(v, numbers.Real) and not isinstance(v, bool | np.bool_)


def is_key(v: object) -> bool:
    """Whether ``v`` is a typed PRNG key array (``jax.random.key``) or an abstract one (a
    ``jax.ShapeDtypeStruct`` of a key dtype), which checkpoints and device transfers carry as
    their raw uint32 data; raw keys (``jax.random.PRNGKey``, plain uint32) are not."""
    dtype = getattr(v, "dtype", None)
    if dtype is None or isinstance(dtype, np.dtype):
        return False
    import jax  # only here: a dtype that is not NumPy's comes from JAX

    return jax.dtypes.issubdtype(dtype, jax.dtypes.prng_key)
