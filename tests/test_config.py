"""Configs: types checked, overrides parsed and refused with the list of valid keys."""

import dataclasses

import pytest

from jaxcnn import config as C
from jaxcnn.errors import ConfigError


def test_override_parses_strings_to_field_types():
    cfg = C.override(C.Config(), {"epochs": "3", "lr": "0.5", "runs-dir": "out",
                                  "normalize": "false", "data_dir": "none",
                                  "decay_epochs": "2,4", "schedule": "step"})
    assert (cfg.epochs, cfg.lr, cfg.runs_dir, cfg.normalize) == (3, 0.5, "out", False)
    assert cfg.data_dir is None and cfg.decay_epochs == (2, 4)
    cfg = C.override(C.Config(), {"schedule": "warmup_cosine", "warmup_epochs": 1})
    assert cfg.warmup_epochs == 1.0 and isinstance(cfg.warmup_epochs, float)


def test_config_is_frozen():
    with pytest.raises(dataclasses.FrozenInstanceError):
        C.Config().lr = 1.0  # type: ignore[misc]


def test_unknown_key_is_refused_with_valid_keys_and_a_suggestion():
    with pytest.raises(ConfigError, match=r"unknown config key 'lrr' \(did you mean 'lr'\?\); "
                                          r"valid keys are experiment, dataset, .*on_nonfinite"):
        C.override(C.Config(), {"lrr": 0.1})


@pytest.mark.parametrize(("key", "value"), [("epochs", "1.5"), ("lr", "fast"),
                                             ("normalize", "maybe"), ("batch_size", True),
                                             ("seed", 1.5)])
def test_wrong_type_is_refused_with_valid_keys(key, value):
    with pytest.raises(ConfigError, match=rf"{key}=.* valid keys are experiment, .*epochs"):
        C.override(C.Config(), {key: value})


def test_constructor_refuses_wrong_types_and_values():
    with pytest.raises(ConfigError, match=r"lr='0.1' has type str but float is needed"):
        C.Config(lr="0.1")  # type: ignore[arg-type]
    with pytest.raises(ConfigError, match=r"optimizer='rmsprop' is not one of sgd, momentum"):
        C.Config(optimizer="rmsprop")
    with pytest.raises(ConfigError, match=r"epochs=0 but it must be >= 1"):
        C.Config(epochs=0)
    with pytest.raises(ConfigError, match=r"val_fraction=1.0 but it must lie in \[0, 1\)"):
        C.Config(val_fraction=1.0)
    with pytest.raises(ConfigError, match=r"experiment='a/b' must be a non-empty name"):
        C.Config(experiment="a/b")


def test_json_round_trip_for_both_classes():
    cfg = C.Config(experiment="x", schedule="step", decay_epochs=(3, 6), data_dir="/d")
    assert C.from_json(C.to_json(cfg)) == cfg
    demo = C.FiltersConfig(images=("china.jpg",))
    assert C.from_json(C.to_json(demo)) == demo


def test_from_json_refuses_unknown_keys_and_classes():
    with pytest.raises(ConfigError, match="unknown config key 'nope'"):
        C.from_dict({"_class": "Config", "nope": 1})
    with pytest.raises(ConfigError, match="config class 'Other' is unknown"):
        C.from_dict({"_class": "Other"})
    with pytest.raises(ConfigError, match="cannot be parsed"):
        C.from_json("{not json")


def test_changed_keys_in_field_order():
    old = C.Config()
    new = C.override(old, {"seed": 3, "model": "lenet5", "epochs": 20})
    assert C.changed_keys(old, new) == ["model", "epochs", "seed"]
    assert "epochs" in C.RESUMABLE_KEYS and "model" not in C.RESUMABLE_KEYS
