"""The method contract, for every conf/method/*.yaml (names from the registry, never literals):

apply to a small model -> its schedule run to the end with real optimizer steps (on_time at every
epoch and step start, after_step after every step) -> finalize -> export -> a fresh method (built as
a later process builds it, without its run references) loads the file into a fresh model ->
identical eval logits; plus each method's own invariant: pruned weights stay zero, quantized
weights take at most 2^w values per bucket, a shared layer at most 2^b values, and the file is
smaller than the FP32 file wherever the model it holds is (fewer non-zero weights, quantized or
shared layers).
"""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from hydra.utils import instantiate
from omegaconf import OmegaConf

from lightning_modules.compression.method import Compose, Method
from lightning_modules.compression.pruning.magnitude import is_masked, nonzero_params
from lightning_modules.compression.quantization.qlayers import QLayer
from lightning_modules.compression.coding.share import is_shared, sharing
from lightning_modules.config_check import choices
from lightning_modules.earlier_runs import replace_references
from lightning_modules.models import LeNet5
from tests.compression.conftest import CONF, PRESET

METHODS = choices("method")
STEPS_PER_EPOCH = 3


def model_for(name: str) -> torch.nn.Module:
    """LeNet-5 (28x28, 10 classes) for every method; SSPQ quantizes 1x1 convs: its own net."""
    torch.manual_seed(0)
    if name == "sspq":
        cfg = OmegaConf.load(CONF / "model" / "sspq_small.yaml")
        return instantiate(cfg.net, in_channels=1, image_size=28, num_classes=10, _convert_="all")
    return LeNet5()


def method_cfg(name: str) -> dict:
    bits = OmegaConf.load(CONF / "bits" / f"{PRESET.get(name, 'w2a32g32' if 'quant' in name else 'w32a32g32')}.yaml")
    cfg = OmegaConf.merge({"bits": bits}, {"method": OmegaConf.load(CONF / "method" / f"{name}.yaml")})
    out = OmegaConf.to_container(cfg.method, resolve=True)
    out.pop("label", None)
    return out


def build(name: str, references: dict | None) -> Method:
    """As run.build_method does it: references (teacher, start_from, init_from) replaced by what
    the harness hands over (here: a frozen LeNet-5 teacher, a LeNet-5 state dict), or None as a
    later process loading the file builds it."""
    def give(key, spec, where):
        return None if references is None else references[key]
    cfg = method_cfg(name)
    if references is not None:  # every reference set, whatever the YAML default
        cfg = replace_references(_set_references(cfg), give)
    else:
        cfg = replace_references(cfg, give)
    return instantiate(cfg, _convert_="all")


def _set_references(node):
    if isinstance(node, dict):
        return {k: ("set" if k in ("teacher", "start_from", "init_from") else _set_references(v))
                for k, v in node.items()}
    return node


def references() -> dict:
    torch.manual_seed(1)
    trained = LeNet5()
    teacher = LeNet5().eval().requires_grad_(False)
    return {"teacher": teacher, "start_from": trained.state_dict(), "init_from": trained.state_dict()}


def last_epoch(method: Method) -> int:
    parts = method.methods if isinstance(method, Compose) else [method]
    ends = [m.schedule.last for m in parts if m.schedule is not None]
    return max(ends, default=0)


def train(method: Method, model: torch.nn.Module, x, y) -> torch.nn.Module:
    model = method.apply(model)
    epochs = last_epoch(method) + 2
    method.check(epochs)
    opt = torch.optim.Adam([p for p in model.parameters() if p.requires_grad], lr=1e-3)
    step = 0
    for epoch in range(epochs):
        method.on_time(model, epoch, "epoch")
        for _ in range(STEPS_PER_EPOCH):
            method.on_time(model, step, "step")
            logits = model(x)
            loss = method.loss(logits, y, (x, y))
            loss = F.cross_entropy(logits, y) if loss is None else loss
            opt.zero_grad()
            loss.backward()
            opt.step()
            method.after_step(model, opt.param_groups[0]["lr"])
            step += 1
    assert method.unfinished() is None
    return model


def distinct_per_bucket(w: torch.Tensor, bucket: int | None) -> int:
    """The most distinct values in one bucket: a row of the weight (per-channel scales) or a run
    of `bucket` consecutive values (bucketed scaling), whichever the method uses."""
    flat = w.detach().reshape(-1)
    size = bucket or w[0].numel()
    return max(len(torch.unique(flat[i:i + size])) for i in range(0, flat.numel(), size))


@pytest.mark.parametrize("name", METHODS)
def test_method_contract(name, tmp_path):
    torch.manual_seed(0)
    x, y = torch.randn(16, 1, 28, 28), torch.randint(0, 10, (16,))
    method = build(name, references())
    model = train(method, model_for(name), x, y)

    # the method's invariants while its structure is live
    for n, m in model.named_modules():
        if is_masked(m):
            assert torch.all(m.weight[m.weight_mask == 0] == 0), f"{name}: pruned weights of {n} moved"
        if is_shared(m):
            limit = 2 ** sharing(m).idx.max().item().bit_length() + 1
            assert len(torch.unique(m.weight.detach())) <= limit
    fp32_file = tmp_path / "fp32.pt"
    Method().export(model_for(name), fp32_file)
    params_before = sum(p.numel() for p in model_for(name).parameters())

    model = method.finalize(model).eval()
    with torch.no_grad():
        logits = model(x)
    bits = method.layer_bits(model)
    for layer, b in bits.items():
        m = model.get_submodule(layer)
        assert isinstance(m, QLayer) and set(b) == {"w", "a", "g"}
        if b["w"] < 32:
            with torch.no_grad():
                w = m.quantized_weight()
            bucket = getattr(m.weight_quant, "bucket_size", None)
            assert distinct_per_bucket(w, bucket) <= 2 ** b["w"], f"{name}: {layer} off its {b['w']}-bit grid"

    path = method.export(model, tmp_path / "model.pt")
    assert path.stat().st_size > 0
    fresh = build(name, None)
    loaded = fresh.load(model_for(name), path).eval()
    with torch.no_grad():
        again = loaded(x)
    assert torch.equal(again, logits), f"{name}: reloaded model predicts differently"

    fewer_bits = any(b["w"] < 32 for b in bits.values()) or any(is_shared(m) for m in model.modules())
    if nonzero_params(model) < params_before or fewer_bits:
        assert path.stat().st_size < fp32_file.stat().st_size, f"{name}: file not smaller than FP32's"
