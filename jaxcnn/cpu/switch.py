"""The one switch of jaxcnn's CPU mechanisms: ``JAXCNN_CPU`` and :func:`off`.

Standard library only, so that it costs nothing to import (JAX is asked for its backend only
when ``auto`` has to be decided).
"""

from __future__ import annotations

import contextlib
import contextvars
import os
from collections.abc import Iterator

__all__ = ["ENV_VAR", "enabled", "off"]

#: ``auto`` (default: on where JAX's default backend is the CPU), ``on`` (always) or ``off``.
ENV_VAR = "JAXCNN_CPU"

# Set only by off(), for the current thread or task (a ContextVar, not a global flag): another
# thread tracing at the same time keeps the variable's choice.
_OFF: contextvars.ContextVar[bool] = contextvars.ContextVar("jaxcnn_cpu_off", default=False)


@contextlib.contextmanager
def off() -> Iterator[None]:
    """Functions traced inside this block get none of jaxcnn's CPU mechanisms (:func:`enabled`
    is False): ``lax.conv_general_dilated`` with JAX's own derivatives, and whole batches, as
    ``JAXCNN_CPU=off`` would; for programs that must not carry the CPU-specific formulation,
    e.g. ones lowered for GPU as well (:func:`jaxcnn.export.export_model`).

    >>> with off():
    ...     enabled()
    False
    """
    token = _OFF.set(True)
    try:
        yield
    finally:
        _OFF.reset(token)


def enabled() -> bool:
    """Whether jaxcnn's CPU mechanisms are on: read from ``JAXCNN_CPU`` when a function is
    traced, so a jitted function keeps the choice it was compiled with. Always False inside
    :func:`off`."""
    if _OFF.get():
        return False
    value = os.environ.get(ENV_VAR, "auto").strip().lower() or "auto"
    if value not in ("auto", "on", "off"):
        raise ValueError(f"{ENV_VAR} must be 'auto', 'on' or 'off', got {value!r}; unset it "
                         f"or pick one of those")
    if value == "auto":
        import jax

        return jax.default_backend() == "cpu"
    return value == "on"
