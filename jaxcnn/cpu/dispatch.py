"""How JAX's CPU client runs a compiled call: on the calling thread, not on a thread of its own.

Why: by default (asynchronous dispatch) JAX's CPU client runs each call on a dispatch thread of
its own, which executes the call's operations itself beside the runtime's worker threads, one
per core. A training step called once per batch from Python, the step a researcher writes by
hand (``jax.jit`` of ``jax.value_and_grad``), then keeps more threads busy than there are cores.
On a 2-core Zen 3, simple_cnn's such step trained at 0.68x (batch 128) and 0.75x (1024) the
images/s of the same step inside a scanned epoch; called inline, at 0.93x and 1.12x: 1.64x and
1.43x faster (3/3 passes). LeNet-5's small operations gained nothing (0.96x and 1.02x)
(``benchmarks/inline_calls.py``; ``benchmarks/README.md``). A scanned epoch, one call for many
steps, runs about the same either way.

What it costs: a call returns once its result is computed, so Python no longer prepares the
next batch while the step runs. jaxcnn's scanned epochs keep their data on the device; their
images/s in the same benchmark were within the machine's noise either way.
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
