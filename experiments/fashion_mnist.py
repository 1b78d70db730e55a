"""The Flax-example CNN on Fashion-MNIST: Adam with warm-up and cosine decay, 10 epochs
(the README's Results table has its result).

Run it (every config key can be overridden; `--help` lists them)::

    python experiments/fashion_mnist.py --epochs 10 --runs-dir runs
    jaxcnn run fashion_mnist --epochs 10 --runs-dir runs

Continue an interrupted run, or extend a finished one::

    jaxcnn resume runs/fashion_mnist/<timestamp>-<id> --epochs 20
"""

from jaxcnn import cli
from jaxcnn.config import Config


def get_config() -> Config:
    """The configuration of this experiment."""
    return Config(
        experiment="fashion_mnist",
        dataset="fashion_mnist",
        model="simple_cnn",
        epochs=10,
        batch_size=128,
        optimizer="adamw",
        lr=2e-3,
        weight_decay=1e-4,
        schedule="warmup_cosine",
        warmup_epochs=1.0,
        val_fraction=0.1,
        log_every=50,
    )


def main(argv: list[str] | None = None) -> int:
    """Hand the config, with the command line's overrides, to the runner."""
    return cli.run_main(get_config(), argv)


if __name__ == "__main__":
    raise SystemExit(main())
