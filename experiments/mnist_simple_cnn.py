"""The CNN of Flax's MNIST example on MNIST: SGD with momentum and cosine decay, 10
epochs (the README's Results table has its result).

Run it (every config key can be overridden; `--help` lists them)::

    python experiments/mnist_simple_cnn.py --epochs 10 --runs-dir runs
    jaxcnn run mnist_simple_cnn --epochs 10 --runs-dir runs

Continue an interrupted run, or extend a finished one::

    jaxcnn resume runs/mnist_simple_cnn/<timestamp>-<id> --epochs 20
"""

from jaxcnn import cli
from jaxcnn.config import Config


def get_config() -> Config:
    """The configuration of this experiment."""
    return Config(
        experiment="mnist_simple_cnn",
        dataset="mnist",
        model="simple_cnn",
        epochs=10,
        batch_size=128,
        optimizer="momentum",
        lr=0.05,
        momentum=0.9,
        weight_decay=5e-4,
        schedule="cosine",
        val_fraction=0.1,
        log_every=50,
    )


def main(argv: list[str] | None = None) -> int:
    """Hand the config, with the command line's overrides, to the runner."""
    return cli.run_main(get_config(), argv)


if __name__ == "__main__":
    raise SystemExit(main())
