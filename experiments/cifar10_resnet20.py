"""ResNet-20 (He et al. 2015, option-A shortcuts, 269,722 parameters) on CIFAR-10 with the
paper's augmentation: 4 pixels of zero padding, a random 32x32 crop and a random horizontal
flip, on the device inside the compiled epoch. SGD with momentum 0.9, weight decay 1e-4,
warm-up and cosine decay, for 30 epochs (the paper trains 182 for 91.25%); not yet run to the
end here. It wants an accelerator.

Run it (every config key can be overridden; `--help` lists them)::

    python experiments/cifar10_resnet20.py --epochs 30 --runs-dir runs
    jaxcnn run cifar10_resnet20 --epochs 30 --runs-dir runs

Continue an interrupted run, or extend a finished one::

    jaxcnn resume runs/cifar10_resnet20/<timestamp>-<id> --epochs 20
"""

from jaxcnn import cli
from jaxcnn.config import Config


def get_config() -> Config:
    """The configuration of this experiment."""
    return Config(
        experiment="cifar10_resnet20",
        dataset="cifar10",
        model="resnet20",
        epochs=30,
        batch_size=128,
        optimizer="momentum",
        lr=0.1,
        momentum=0.9,
        weight_decay=1e-4,
        schedule="warmup_cosine",
        warmup_epochs=1.0,
        augment=("crop:4", "flip"),
        val_fraction=0.1,
        log_every=50,
    )


def main(argv: list[str] | None = None) -> int:
    """Hand the config, with the command line's overrides, to the runner."""
    return cli.run_main(get_config(), argv)


if __name__ == "__main__":
    raise SystemExit(main())
