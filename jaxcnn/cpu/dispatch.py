"""How JAX's CPU client runs a compiled call: on the calling thread, not on a thread of its own.

Why: by default (asynchronous dispatch) JAX's CPU client runs each call on a dispatch thread of
its own, which executes the call's operations itself beside the runtime's worker threads, one
per core. A training step called once per batch from Python, the step a researcher writes by
hand (``jax.jit`` of ``jax.value_and_grad``), then keeps more threads busy than there are cores:
on a 2-core Zen 3 it trained simple_cnn and LeNet-5 at 0.55x-0.84x the images/s of the same
step inside a scanned epoch. Called inline, the same steps ran at 0.95x-1.14x of it
(``benchmarks/inline_calls.py``; figures in ``benchmarks/README.md``). A scanned epoch, one call
for many steps, is about the same either way.

What it costs: a call returns once its result is computed, so Python no longer prepares the
next batch while the step runs; jaxcnn's epochs keep their data on the device and lose nothing
by it.
"""

from __future__ import annotations

import os

from jaxcnn.cpu.switch import ENV_VAR

__all__ = ["call_inline"]


def call_inline() -> bool:
    """Make JAX's CPU client run each compiled call on the calling thread
    (``jax_cpu_enable_async_dispatch = False``). JAX reads the setting once, when it makes the
    CPU client, so this works only before the first computation; ``import jaxcnn`` calls it.
    To keep asynchronous dispatch, set ``JAXCNN_CPU=off``, or
    ``jax.config.update("jax_cpu_enable_async_dispatch", True)`` after importing jaxcnn.

    Returns whether it applied: False where ``JAXCNN_CPU=off`` or where JAX's backends already
    exist (nothing is changed then)."""
    if os.environ.get(ENV_VAR, "").strip().lower() == "off":
        return False
    import jax
    from jax._src import xla_bridge  # backends_are_initialized has no public name

    if xla_bridge.backends_are_initialized():
        return False
    jax.config.update("jax_cpu_enable_async_dispatch", False)
    return True
