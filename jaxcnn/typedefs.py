"""Type aliases shared by every module, defined once."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import jax

Array = jax.Array
Key = jax.Array
Shape = tuple[int | None, ...]
Params = dict[str, Any]
State = dict[str, Any]
Initializer = Callable[[Key, tuple[int, ...], Any], Array]
Padding = str | int | tuple[tuple[int, int], tuple[int, int]]
