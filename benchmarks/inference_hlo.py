"""Is jaxcnn's inference the same compiled program as the hand-written raw-JAX model?

    .venv/bin/python benchmarks/inference_hlo.py                 # simple_cnn at 128 and 1024
    .venv/bin/python benchmarks/inference_hlo.py --models simple_cnn,lenet5 --batches 128

Compiles ``jax.jit(model.apply)`` and ``train_throughput.py``'s raw-JAX forward for the same
model and batch, and compares XLA's optimized HLO instruction by instruction, with names,
parameter numbers and source metadata taken out. Where they are the same program (simple_cnn,
whose convolutions take ``lax.conv_general_dilated`` at inference), any difference between the
two in ``train_throughput.py``'s inference rows is the machine's noise; lenet5's 1-channel
first convolution runs as taps instead, so its programs differ (by design).
"""

from __future__ import annotations

import argparse
import re
import sys
from collections import Counter
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import train_throughput as tt  # noqa: E402

from jaxcnn import models  # noqa: E402


def instructions(hlo: str) -> list[str]:
    """The HLO's instructions, sorted, with names, parameter names and metadata removed."""
    out = []
    for line in hlo.splitlines():
        if " = " not in line:
            continue
        line = re.sub(r", metadata=\{[^}]*\}", "", line)
        line = re.sub(r"%[\w.\-]+", "%v", line)
        line = re.sub(r"[\w.\-]+(?=: f32)", "p", line)
        line = re.sub(r"\bparameter\(\d+\)", "parameter(i)", line)
        out.append(re.sub(r"^\s*ROOT\s+", "", line.strip()))
    return sorted(out)


def compare(name: str, batch: int) -> tuple[bool, int, int, list[str]]:
    model = getattr(models, name)()
    _, params, state = model.init(jax.random.key(0), (None, *tt.IN_SHAPE))
    x = jnp.zeros((batch, *tt.IN_SHAPE))
    ours = jax.jit(lambda p, s, x: model.apply(p, s, x)[0]).lower(params, state, x)
    raw = jax.jit(lambda p, x: tt._raw_apply(name, p, x)).lower(
        tt._raw_params(name, jax.random.key(0)), x)
    a = instructions(ours.compile().as_text())
    b = instructions(raw.compile().as_text())
    diff = [f"jaxcnn only: {k} x{v}" for k, v in (Counter(a) - Counter(b)).items()]
    diff += [f"raw JAX only: {k} x{v}" for k, v in (Counter(b) - Counter(a)).items()]
    return a == b, len(a), len(b), diff


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--models", default="simple_cnn")
    p.add_argument("--batches", default="128,1024")
    args = p.parse_args(argv)
    print(f"jax {jax.__version__} ({jax.default_backend()})")
    for name in args.models.split(","):
        for batch in map(int, args.batches.split(",")):
            same, na, nb, diff = compare(name.strip(), batch)
            print(f"{name} b{batch}: {'the same program' if same else 'different programs'} "
                  f"({na} instructions in jaxcnn's, {nb} in raw JAX's)")
            for line in diff[:8]:
                print(f"  {line[:160]}")


if __name__ == "__main__":
    main()
