"""`Compose`: parts run in order (apply, on_time, after_step, finalize), the last part that gives a
loss wins, the last part writes and reads the file, layer_bits are merged (later parts win),
scheduled parts must follow one another, and check/unfinished ask every part."""
import pytest
import torch
from torch import nn

from lightning_modules.compression.errors import ConfigError
from lightning_modules.compression.method import Compose, Method
from lightning_modules.compression.schedule import Schedule


class Part(Method):
    """Records every hook call into a shared log, tagged with its own name."""

    def __init__(self, name, log, loss=None, schedule=None, bits=None):
        super().__init__(name)
        self.log, self._loss, self.schedule, self._bits = log, loss, schedule, bits or {}

    def apply(self, model):
        self.log.append(("apply", self.name))
        return model

    def step(self, model, t):
        self.log.append(("step", self.name, t))

    def after_step(self, model, lr):
        self.log.append(("after_step", self.name, lr))

    def loss(self, logits, target, batch):
        return None if self._loss is None else torch.tensor(self._loss)

    def finalize(self, model):
        self.log.append(("finalize", self.name))
        return model

    def layer_bits(self, model):
        return self._bits

    def export(self, model, path):
        self.log.append(("export", self.name))
        return path

    def load(self, model, path):
        self.log.append(("load", self.name))
        return model


def test_order_loss_file_and_bits():
    log, net = [], nn.Linear(2, 2)
    c = Compose(name="c", a=Part("a", log, loss=1.0, schedule=Schedule(0, key="method.a"),
                                  bits={"x": {"w": 2, "a": 32, "g": 32}}),
                b=Part("b", log, schedule=Schedule(1, key="method.b"), bits={"x": {"w": 4, "a": 32, "g": 32}}),
                d=Part("d", log, loss=3.0))
    c.apply(net)
    assert [c.on_time(net, t, "epoch") for t in (0, 1, 2)] == [True, True, False]
    c.after_step(net, 0.1)
    c.finalize(net)
    c.export(net, "f")
    c.load(net, "f")
    assert log == [("apply", "a"), ("apply", "b"), ("apply", "d"), ("step", "a", 0), ("step", "b", 1),
                   ("after_step", "a", 0.1), ("after_step", "b", 0.1), ("after_step", "d", 0.1),
                   ("finalize", "a"), ("finalize", "b"), ("finalize", "d"), ("export", "d"), ("load", "d")]
    assert c.loss(None, None, None).item() == 3.0  # the last part that gives a loss
    assert Compose(a=Part("a", [], loss=1.0), b=Part("b", [])).loss(None, None, None).item() == 1.0
    assert Compose(a=Part("a", []), b=Part("b", [])).loss(None, None, None) is None
    assert c.layer_bits(net) == {"x": {"w": 4, "a": 32, "g": 32}}  # later parts win


def test_check_and_unfinished_ask_every_part():
    c = Compose(a=Part("a", [], schedule=Schedule(0, key="method.a")),
                b=Part("b", [], schedule=Schedule(3, key="method.b")))
    with pytest.raises(ConfigError, match=r"^method.b.start=3: must be < trainer.max_epochs=3"):
        c.check(3)
    c.check(4)
    net = nn.Linear(2, 2)
    c.on_time(net, 0, "epoch")
    assert c.unfinished() == "method.b.start=3: the run ended before this epoch (schedule unfinished)"
    c.on_time(net, 3, "epoch")
    assert c.unfinished() is None


@pytest.mark.parametrize("second,msg", [
    (Schedule(1, 2, key="method.b"), r"method.b.start=1: must be after the last step of method.a \(method.a.end=1\)"),
    (Schedule(5, interval="step", key="method.b"), "method.b.interval=step: must equal method.a.interval=epoch"),
])
def test_scheduled_parts_must_follow_one_another(second, msg):
    with pytest.raises(ConfigError, match=msg):
        Compose(a=Part("a", [], schedule=Schedule(0, 1, key="method.a")), b=Part("b", [], schedule=second))


def test_parts_must_be_methods():
    with pytest.raises(ConfigError, match="method.a=3: not a method"):
        Compose(a=3)
    with pytest.raises(ConfigError, match="needs at least one part"):
        Compose(name="empty")
