"""Low-rank approximation: truncated SVD for linear layers, Tucker-2 for convolutions.

Linear, W (m x n) ~ U_r S_r V_r^T (Eckart-Young: the best rank-r approximation in Frobenius and
spectral norm) -> two Linear layers, n -> r (weight S_r^1/2 V_r^T, no bias) and r -> m (weight
U_r S_r^1/2, the bias): r (m + n) weights instead of m n.

Conv2d, W (C_out x C_in x K x K) ~ G x_out U_out x_in U_in, Tucker-2 by HOSVD (Kim et al. 2016,
"Compression of Deep Convolutional Neural Networks for Fast and Low Power Mobile Applications"):
U_in (C_in x r1) and U_out (C_out x r2) are the leading left singular vectors of W's mode-in
(C_in x C_out K K) and mode-out (C_out x C_in K K) unfoldings, the core G = W x_out U_out^T
x_in U_in^T (r2 x r1 x K x K) -> 1x1 conv C_in -> r1 (weight U_in^T), KxK conv r1 -> r2 (the
core, the layer's stride, padding, dilation), 1x1 conv r2 -> C_out (weight U_out, the bias):
C_in r1 + r1 r2 K^2 + r2 C_out weights instead of C_out C_in K^2. Exact at full ranks.

Ranks: `energy` e keeps the fewest singular values (of each mode) whose squares sum to at least
e of the total; `params_ratio` p keeps at most p of the layer's weights (SVD: r = floor(p m n /
(m + n)); Tucker-2: r_i = floor(a C_i) with a the root of p C_in C_out K^2 = a (C_in^2 + C_out^2)
+ a^2 C_in C_out K^2). A layer whose factored form would not be smaller stays as it is.

Factoring changes the parameter set, so it is done once, in `apply`, before the optimizer
exists: the weights come from a trained fp32 run (`init_from`: its state dict, which the harness
builds from a run name, run directory or model file, lightning_modules/earlier_runs.py) and the run
fine-tunes the factored net. The factored layers are real smaller layers: params and FLOPs fall
in the record. `export` writes the ranks and the factored state dict (a container.py file of kind "low_rank");
`load` rebuilds the factored structure on a fresh model.
"""
from __future__ import annotations

import copy
import logging
import math
from collections.abc import Mapping, Sequence
from pathlib import Path

import torch
from torch import nn

from .. import container
from ..errors import ConfigError, FileFormatError
from ..select import choose, parse
from ..swap import replace_module
from ..method import Method, load_state, read_model_file, state_mismatch

KIND = "low_rank"  # container.py kind (before it: MAGIC LWBLR1 | u64 | torch.save | crc32)
LAYERS = ({"type": ["linear", "conv"]},)  # every Linear (SVD) and Conv2d (Tucker-2)
log = logging.getLogger("harness")


class FactoredLinear(nn.Sequential):
    """Linear n -> r (no bias), Linear r -> m (the bias): W = second.weight @ first.weight."""

    def __init__(self, layer: nn.Linear, r: int):
        kw = {"device": layer.weight.device, "dtype": layer.weight.dtype}
        super().__init__(nn.Linear(layer.in_features, r, bias=False, **kw),
                         nn.Linear(r, layer.out_features, layer.bias is not None, **kw))

    @property
    def ranks(self) -> list[int]:
        return [self[0].out_features]


class Tucker2Conv(nn.Sequential):
    """1x1 conv C_in -> r1, KxK conv r1 -> r2 (the layer's geometry), 1x1 conv r2 -> C_out."""

    def __init__(self, layer: nn.Conv2d, r1: int, r2: int):
        if layer.groups != 1:
            raise ConfigError("method.layers: Tucker-2 needs ungrouped convolutions (keep the grouped "
                              "ones with a rule {type: depthwise, quantize: false} or by name)")
        kw = {"device": layer.weight.device, "dtype": layer.weight.dtype}
        super().__init__(
            nn.Conv2d(layer.in_channels, r1, 1, bias=False, **kw),
            nn.Conv2d(r1, r2, layer.kernel_size, layer.stride, layer.padding, layer.dilation,
                      bias=False, padding_mode=layer.padding_mode, **kw),
            nn.Conv2d(r2, layer.out_channels, 1, bias=layer.bias is not None, **kw))

    @property
    def ranks(self) -> list[int]:
        return [self[0].out_channels, self[1].out_channels]


def svd_factors(W: torch.Tensor, r: int) -> tuple[torch.Tensor, torch.Tensor]:
    """W (m x n) -> (first (r x n), second (m x r)), second @ first = the best rank-r approximation."""
    U, S, Vh = torch.linalg.svd(W.detach().double(), full_matrices=False)
    s = S[:r].sqrt()
    return s[:, None] * Vh[:r], U[:, :r] * s


def tucker2_factors(W: torch.Tensor, r1: int, r2: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """HOSVD of W (C_out, C_in, K, K) on its two channel modes -> (U_in^T (r1, C_in), core
    (r2, r1, K, K), U_out (C_out, r2)); W ~ einsum('rskl,or,is->oikl', core, U_out, U_in)."""
    W = W.detach().double()
    U_out = torch.linalg.svd(W.flatten(1), full_matrices=False)[0][:, :r2]
    U_in = torch.linalg.svd(W.transpose(0, 1).flatten(1), full_matrices=False)[0][:, :r1]
    core = torch.einsum("oikl,or,is->rskl", W, U_out, U_in)
    return U_in.T, core, U_out


def energy_rank(s: torch.Tensor, energy: float) -> int:
    """Fewest singular values whose squares sum to >= energy of the total (at least 1)."""
    e = (s.double() ** 2).cumsum(0)
    return max(1, min(len(s), int((e < energy * e[-1] * (1 - 1e-12)).sum()) + 1))


def factored_params(layer: nn.Module, ranks: Sequence[int]) -> int:
    """Weights of the factored layer (biases not counted: they are the same)."""
    if isinstance(layer, nn.Linear):
        return ranks[0] * (layer.in_features + layer.out_features)
    (r1, r2), k2 = ranks, layer.weight[0, 0].numel()
    return layer.in_channels * r1 + r1 * r2 * k2 + r2 * layer.out_channels


def choose_ranks(layer: nn.Module, energy: float | None, ratio: float | None) -> list[int]:
    W = layer.weight.detach().double()
    if isinstance(layer, nn.Linear):
        m, n = W.shape
        if ratio is not None:
            return [max(1, min(m, n, math.floor(ratio * m * n / (m + n))))]
        return [energy_rank(torch.linalg.svdvals(W), energy)]
    c_out, c_in = W.shape[:2]
    full = [min(c_in, W[0].numel() // c_in * c_out), min(c_out, W[0].numel())]
    if ratio is not None:
        a, b = c_in * c_out * W[0, 0].numel(), c_in ** 2 + c_out ** 2
        alpha = (-b + math.sqrt(b * b + 4 * a * ratio * a)) / (2 * a)
        return [max(1, min(f, math.floor(alpha * c))) for f, c in zip(full, (c_in, c_out))]
    return [energy_rank(torch.linalg.svdvals(W.transpose(0, 1).flatten(1)), energy),
            energy_rank(torch.linalg.svdvals(W.flatten(1)), energy)]


@torch.no_grad()
def factor(layer: nn.Module, ranks: Sequence[int]) -> nn.Sequential:
    """The factored replacement of a Linear (SVD) or Conv2d (Tucker-2) at these ranks."""
    W = layer.weight
    if isinstance(layer, nn.Linear):
        new = FactoredLinear(layer, *ranks)
        first, second = svd_factors(W, ranks[0])
        new[0].weight.copy_(first), new[1].weight.copy_(second)
    else:
        new = Tucker2Conv(layer, *ranks)
        first, core, last = tucker2_factors(W, *ranks)
        new[0].weight.copy_(first[:, :, None, None]), new[1].weight.copy_(core)
        new[2].weight.copy_(last[:, :, None, None])
    if layer.bias is not None:
        new[-1].bias.copy_(layer.bias)
    return new.train(layer.training)


def _empty(layer: nn.Module, ranks: Sequence[int]) -> nn.Sequential:
    return FactoredLinear(layer, *ranks) if isinstance(layer, nn.Linear) else Tucker2Conv(layer, *ranks)


def factored(model: nn.Module) -> dict[str, list[int]]:
    """{layer name: ranks} of the factored layers of a model."""
    return {n: m.ranks for n, m in model.named_modules() if isinstance(m, (FactoredLinear, Tucker2Conv))}


def _number(key: str, v, lo: float, hi: float) -> float:
    if isinstance(v, bool) or not isinstance(v, (int, float)) or not lo < v <= hi:
        raise ConfigError(f"method.{key}={v}: must be a number in ({lo:g}, {hi:g}]")
    return float(v)


class LowRank(Method):
    """`method=low_rank`: see the module doc and conf/method/low_rank.yaml for the keys."""

    def __init__(self, name: str = "low_rank", energy: float | None = 0.9,
                 params_ratio: float | None = None, layers: Sequence[Mapping] = LAYERS,
                 init_from: Mapping | None = None):
        super().__init__(name)
        if (energy is None) == (params_ratio is None):
            raise ConfigError(f"method.energy={energy}, method.params_ratio={params_ratio}: set "
                              "exactly one of them (the other null)")
        self.energy = None if energy is None else _number("energy", energy, 0, 1)
        self.params_ratio = None if params_ratio is None else _number("params_ratio", params_ratio, 0, 1)
        self.rules = parse(layers, "method.layers")
        self.init_from = None if init_from is None else dict(init_from)  # the trained weights to factor (a state dict the harness hands over)
        self.ranks: dict[str, list[int]] = {}

    def ranks_of(self, layer: nn.Module, rank: int | float | None) -> list[int]:
        """The layer's ranks: a rule's `rank` (an integer: that rank, capped by the layer's
        dimensions; a fraction: this layer's energy or params_ratio), else the method's."""
        if isinstance(rank, int):  # Linear: [r]; Conv2d: [r1 (input modes), r2 (output modes)]
            if isinstance(layer, nn.Linear):
                return [min(rank, *layer.weight.shape)]
            return [min(rank, layer.in_channels), min(rank, layer.out_channels)]
        if isinstance(rank, float):
            return choose_ranks(layer, rank if self.energy is not None else None,
                                rank if self.energy is None else None)
        return choose_ranks(layer, self.energy, self.params_ratio)

    def _load_init(self, model: nn.Module) -> None:
        if (key := state_mismatch(model, self.init_from)) is not None:
            raise ConfigError(f"method.init_from: its weights do not fit model {type(model).__name__} ({key})")
        model.load_state_dict(self.init_from)

    def apply(self, model: nn.Module) -> nn.Module:
        if self.init_from is not None:
            self._load_init(model)
        self.ranks = {}
        for name, settings in choose(model, self.rules).items():
            layer = model.get_submodule(name)
            ranks = self.ranks_of(layer, settings.get("rank"))
            if factored_params(layer, ranks) >= layer.weight.numel():
                log.info("low rank  %s: ranks %s would not be smaller, kept", name, ranks)
                continue
            replace_module(model, name, factor(layer, ranks))
            self.ranks[name] = ranks
            log.info("low rank  %s: ranks %s, %d -> %d weights", name, ranks, layer.weight.numel(),
                     factored_params(layer, ranks))
        return model

    def export(self, model: nn.Module, path: str | Path) -> Path:
        return container.write(path, KIND, {
            "model": type(model).__name__, "ranks": factored(model),
            "state": {k: v.detach().cpu() for k, v in model.state_dict().items()}})

    def load(self, model: nn.Module, path: str | Path) -> nn.Module:
        """A fresh model (untouched) -> a copy factored at the file's ranks, with its weights."""
        blob = read_model_file(path, KIND, model)
        out, mods = copy.deepcopy(model), dict(model.named_modules())
        try:
            for name, ranks in blob["ranks"].items():
                layer = mods[name]
                n = 1 if isinstance(layer, nn.Linear) else 2 if isinstance(layer, nn.Conv2d) else 0
                if len(ranks) != n or not all(isinstance(r, int) and r >= 1 for r in ranks):
                    raise ValueError(f"{name}: ranks {ranks}")
                replace_module(out, name, _empty(layer, ranks))
        except (KeyError, ValueError, TypeError, AttributeError) as err:
            raise FileFormatError(f"{path}: does not match the model ({err})") from None
        return load_state(out, blob.get("state"), path)
