"""LeNet-5 (61,706 parameters) on MNIST: SGD with momentum and cosine decay, 10 epochs
(the README's Results table has its result). The data is read from --data-dir, $JAXCNN_DATA or the
cache, and downloaded when missing.

Run it (every config key can be overridden; `--help` lists them)::

    python experiments/mnist_lenet5.py --epochs 3 --lr 0.05 --seed 1 --runs-dir runs
    jaxcnn run mnist_lenet5 --epochs 3 --lr 0.05 --seed 1 --runs-dir runs

Continue an interrupted run, or extend a finished one::

    jaxcnn resume runs/mnist_lenet5/<timestamp>-<id> --epochs 20
"""

from jaxcnn import cli
from jaxcnn.config import Config


def get_config() -> Config:
    """The configuration of this experiment."""
    return Config(
        experiment="mnist_lenet5",
        dataset="mnist",
        model="lenet5",
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
