"""The default experiment: a small VGG (conv 32 -> conv 64, BatchNorm, max-pool) on
scikit-learn's bundled 8x8 digits, offline (its result, time and machine are in the README's
Results table).

Run it (every config key can be overridden; `--help` lists them)::

    python experiments/digits_cnn.py --epochs 10 --lr 0.03 --seed 0 --runs-dir runs
    jaxcnn run digits_cnn --epochs 10 --lr 0.03 --seed 0 --runs-dir runs

Continue an interrupted run, or extend a finished one::

    jaxcnn resume runs/digits_cnn/<timestamp>-<id> --epochs 20
"""

from jaxcnn import cli
from jaxcnn.config import Config


def get_config() -> Config:
    """The configuration of this experiment."""
    return Config(
        experiment="digits_cnn",
        dataset="digits",
        model="vgg_small",
        epochs=10,
        batch_size=16,
        optimizer="momentum",
        lr=0.03,
        momentum=0.9,
        schedule="cosine",
        val_fraction=0.1,
        log_every=10,
    )


def main(argv: list[str] | None = None) -> int:
    """Hand the config, with the command line's overrides, to the runner."""
    return cli.run_main(get_config(), argv)


if __name__ == "__main__":
    raise SystemExit(main())
