"""Shared by the compression tests: build a method from its YAML (conf/method) with a bits preset."""
from pathlib import Path

import pytest
from omegaconf import OmegaConf

CONF = Path(__file__).resolve().parents[2] / "conf"
# a valid bits preset (conf/bits) for every quantization method
PRESET = {"binaryconnect": "w1a32g32", "binaryconnect_stochastic": "w1a32g32", "bnn": "w1a1g32",
          "bwn": "w1a32g32", "xnor": "w1a1g32", "dorefa": "w1a2g6", "twn": "w2a32g32",
          "ttq": "w2a32g32", "pow2": "w4a4g32", "uniform": "w4a4g32", "lqnet": "w2a2g32",
          "sspq": "w2a32g32", "lsq": "w2a2g32", "lsq_plus": "w2a2g32", "pact": "w2a2g32"}


def build_method(name: str, bits: dict | str | None = None, *overrides: str):
    """Instantiate conf/method/<name>.yaml as Hydra does, `bits: ${bits}` resolved to `bits`
    (a dict, a conf/bits preset name, or the method's preset); overrides: "method.key=value"."""
    from hydra.utils import instantiate
    bits = bits or PRESET[name]
    if isinstance(bits, str):
        bits = OmegaConf.load(CONF / "bits" / f"{bits}.yaml")
    method = OmegaConf.load(CONF / "method" / f"{name}.yaml")
    method.pop("label", None)  # the table's row name, not a constructor argument (see run.build_method)
    cfg = OmegaConf.merge(OmegaConf.create({"bits": bits, "method": method}),
                          OmegaConf.from_dotlist(list(overrides)))
    return instantiate(cfg.method, _convert_="all")


@pytest.fixture
def make_method():
    return build_method


@pytest.fixture
def presets():
    return dict(PRESET)
