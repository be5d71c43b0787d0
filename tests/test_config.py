"""Every YAML in conf/ composes; struct mode rejects unknown keys; names are as documented."""
from pathlib import Path

import pytest
from hydra import compose, initialize_config_dir
from hydra.utils import instantiate
from hydra.errors import ConfigCompositionException

from lightning_modules.config_check import GROUPS, ConfigError, check_overrides, choices, normalize_overrides

CONF = Path(__file__).resolve().parents[1] / "conf"
ALL = [(g, c) for g in GROUPS for c in choices(g)]


@pytest.fixture(scope="module")
def hydra_ctx():
    with initialize_config_dir(str(CONF), version_base="1.3"):
        yield


@pytest.mark.parametrize("group,choice", ALL, ids=[f"{g}={c}" for g, c in ALL])
def test_every_yaml_composes(hydra_ctx, group, choice):
    cfg = compose("config", overrides=normalize_overrides([f"{group}={choice}"]))
    assert group in cfg
    if group in ("model", "method", "precision"):
        assert cfg[group].name == choice
    if group == "suite":
        assert cfg.suite.name == choice
        from benchmarks.suite import expand, spliced
        for spec in cfg.suite.runs:  # every run of a suite composes too
            for run in expand(spliced(spec)):
                overrides = [*cfg.suite.common, *run]
                if any("@layer" in o or "@alloc(" in o for o in overrides):
                    continue  # generated runs: tests/test_sensitivity.py, test_mixed_precision_suite.py
                data = [o.split("=", 1)[1] for o in overrides if o.startswith("data=")]
                if data and data[-1] not in choices("data"):  # the GPU suites' data=cifar10
                    pytest.skip(f"suite {choice}: data={data[-1]} is not in conf/data on this branch")
                compose("config", overrides=normalize_overrides(overrides))


@pytest.mark.parametrize("model", choices("model"))
def test_every_model_builds_for_fashion_mnist(hydra_ctx, model):
    import torch
    cfg = compose("config", overrides=[f"model={model}"])
    net = instantiate(cfg.model.net, in_channels=1, image_size=28, num_classes=10)
    assert net(torch.zeros(2, 1, 28, 28)).shape == (2, 10)


def test_defaults_and_run_name(hydra_ctx):
    cfg = compose("config")
    assert (cfg.model.name, cfg.method.name, cfg.precision.name) == ("lenet5", "fp32", "32")
    assert (cfg.bits.w, cfg.bits.a, cfg.bits.g) == (32, 32, 32)
    assert cfg.run_name == "lenet5-fp32-W32A32G32-32-s0"
    assert cfg.run_dir == "results/runs/adhoc/lenet5-fp32-W32A32G32-32-s0"


def test_struct_mode_rejects_unknown_keys(hydra_ctx):
    with pytest.raises(ConfigCompositionException):
        compose("config", overrides=["trainer.no_such_key=1"])


def test_numeric_group_choice_is_quoted():
    assert normalize_overrides(["precision=32", "bits.w=4", "model=lenet5"]) == \
        ["precision='32'", "bits.w=4", "model=lenet5"]
    assert normalize_overrides(["precision=32,bf16-mixed"]) == ["precision='32',bf16-mixed"]


def test_unknown_choice_names_valid_ones():
    with pytest.raises(ConfigError, match=r"model=foo: unknown model; valid: active_shift_resnet20, alexnet, .*lenet300, lenet5, .*resnet20, .*vgg_small$"):
        check_overrides(["model=foo"])
    with pytest.raises(ConfigError, match="precision=fp8"):
        check_overrides(["precision=32,fp8"], multirun=True)
