"""Every model in conf/model/ trains: one forward, backward and optimizer step, built as the
harness builds it (timm's test_model_backward, over our registry). Run at 16x16 RGB, batch 2
(every net accepts it: the small stems take over below 64 px), so ImageNet-sized nets cost
well under a second each on CPU."""
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from hydra.utils import instantiate
from omegaconf import OmegaConf
from torch import nn
from torchvision.ops import StochasticDepth

CONF = Path(__file__).resolve().parents[1] / "conf"
MODELS = sorted(p.stem for p in (CONF / "model").glob("*.yaml"))
C, S, CLASSES, LR = 3, 16, 10, 0.1
# (in_channels, image_size) of the datasets the harness has: Fashion-MNIST and CIFAR-10
DATASETS = [(1, 28), (3, 32)]


def build(model: str, c: int = C, s: int = S, classes: int = CLASSES) -> nn.Module:
    """conf/model/<model>.yaml's net with in_channels/image_size/num_classes from the data (as
    lightning_modules.run.build_net passes them)."""
    cfg = OmegaConf.load(CONF / "model" / f"{model}.yaml")
    return instantiate(cfg.net, in_channels=c, image_size=s, num_classes=classes, _convert_="all")


def test_the_registry_is_read():  # an empty glob would silently parametrize nothing
    assert MODELS, f"no model YAMLs under {CONF / 'model'}"


@pytest.mark.parametrize("model", MODELS)
def test_every_parameter_gets_a_gradient_and_the_step_moves_it(model):
    torch.manual_seed(0)
    net = build(model).train()
    for m in net.modules():  # random path dropping would leave a dropped block without gradient
        if isinstance(m, (nn.Dropout, StochasticDepth)):
            m.p = 0.0
    before = {n: p.detach().clone() for n, p in net.named_parameters()}
    assert before and all(p.requires_grad for p in net.parameters())
    out = net(torch.randn(2, C, S, S))
    assert out.shape == (2, CLASSES)
    F.cross_entropy(out, torch.tensor([1, 2])).backward()
    for n, p in net.named_parameters():
        assert p.grad is not None, f"{model}: {n} got no gradient"
        assert torch.isfinite(p.grad).all(), f"{model}: {n} has a non-finite gradient"
        assert p.grad.abs().sum() > 0, f"{model}: {n} has an all-zero gradient (unused in forward?)"
    grads = {n: p.grad.clone() for n, p in net.named_parameters()}
    torch.optim.SGD(net.parameters(), lr=LR).step()
    for n, p in net.named_parameters():  # plain SGD: p <- p - lr * grad, every tensor moves
        torch.testing.assert_close(p.detach(), before[n] - LR * grads[n])
        assert not torch.equal(p.detach(), before[n]), f"{model}: {n} did not move"


@pytest.mark.parametrize("model", MODELS)
def test_eval_logits_are_per_sample_at_each_dataset_size(model):
    """In eval mode (BatchNorm on running statistics, no dropout) a sample's logits do not depend
    on the rest of the batch, at the input sizes of the datasets the harness loads."""
    torch.manual_seed(0)
    for c, s in DATASETS:
        net = build(model, c, s).eval()
        x = torch.randn(3, c, s, s)
        with torch.no_grad():
            out, alone = net(x), net(x[1:2])
        assert out.shape == (3, CLASSES) and torch.isfinite(out).all()
        torch.testing.assert_close(alone[0], out[1], rtol=1e-4, atol=1e-5)
