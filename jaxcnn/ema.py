"""An exponential moving average of the parameters, kept in the optimizer's state.

``optax.chain(optimizer, ema_params(0.999))`` leaves the updates as they are and keeps
``ema = decay * ema + (1 - decay) * params`` after every step (Polyak averaging, as the
``ema_decay`` of the runner's config asks); :func:`ema_of` finds that average in an optimizer
state, for evaluation. Living in the optimizer's state, it is checkpointed and restored with it
and a step whose loss is not finite leaves it unchanged, like everything else of the step.
"""

from __future__ import annotations

from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import optax

__all__ = ["EmaState", "ema_of", "ema_params"]


class EmaState(NamedTuple):
    """The moving average of the parameters (a pytree like them)."""

    ema: Any


def ema_params(decay: float) -> optax.GradientTransformation:
    """A transformation that passes the updates through and keeps the moving average of the
    parameters they give, ``decay`` in (0, 1) (0.999: about the last 1,000 steps)."""
    if not 0.0 < decay < 1.0:
        raise ValueError(f"ema_params: decay must lie in (0, 1), got {decay!r}")

    def init(params):
        return EmaState(jax.tree.map(jnp.asarray, params))

    def update(updates, state, params=None):
        if params is None:
            raise ValueError("ema_params: the update needs the parameters (params=)")
        new = optax.apply_updates(params, updates)
        ema = jax.tree.map(lambda e, p: decay * e + (1.0 - decay) * p, state.ema, new)
        return updates, EmaState(ema)

    return optax.GradientTransformation(init, update)


def ema_of(opt_state: Any) -> Any | None:
    """The moving average of the parameters held in ``opt_state`` (from :func:`ema_params`),
    or None when it holds none."""
    found = [s.ema for s in jax.tree.leaves(
        opt_state, is_leaf=lambda x: isinstance(x, EmaState)) if isinstance(s, EmaState)]
    return found[0] if found else None
