"""Product quantization of the weights (Stock, Joulin, Gribonval, Graham & Jegou 2020, "And the
Bit Goes Down: Revisiting the Quantization of Neural Networks").

A layer's weight, as a matrix W (C_out x D; D = C_in*K*K for a conv, in_features for a linear),
is cut along D into m = D/d sub-vectors w_cj of d weights (a conv with `block_size: kernel` has
d = K*K: one kernel per sub-vector, the paper's choice). One codebook C (k x d) per layer; each
sub-vector is replaced by a codeword, q(W)_cj = C[a_cj], so the layer stores k*d floats and
C_out*m assignments of log2(k) bits.

The codebook minimises the error of the layer's *outputs* on calibration inputs x, not of its
weights: ||x (W - q(W))^T||^2 (Sec. 3.1). With x_j the inputs that meet block j (im2col columns
for a conv) and H_j = x_j^T x_j, EM minimises its block-diagonal part

    J = sum_{c,j} (w_cj - C[a_cj])^T H_j (w_cj - C[a_cj]) = sum_j ||x_j (W_j - q(W)_j)^T||^2

(the cross-terms between blocks are dropped, as in the paper; with one block, d = D, J is the
error itself):

    E-step  a_cj = argmin_k (w_cj - C_k)^T H_j (w_cj - C_k)
    M-step  C_k  = (sum_{a_cj=k} H_j + eps I)^-1 (sum_{a_cj=k} H_j w_cj + eps C_k)

(the weighted centroid; the eps term, a proximal pull to the old codeword, keeps the solve
defined for rank-deficient H; neither step can increase J). A codeword left without members is
moved onto a perturbed copy of the most populated one (Sec. 3.1; J unchanged). Codebooks start
from k sub-vectors drawn at random (`seed`); a layer with fewer than k sub-vectors gets the
largest power of two below their number.

Schedule (a one-step `Schedule` at `start`; the harness calls `on_time`): train normally; at `start` the last
`calibration_batches` training inputs (kept by a forward pre-hook) are passed through the net and
the layers are quantized one after the other, each on the inputs of the already quantized
layers before it; then the codebooks are fine-tuned: W = C[a] (a `parametrize` parametrization
installed inactive by `apply`, so the parameter set never changes; the assignments stay fixed and
dL/dC_k sums the gradients of its sub-vectors). With `distill` the fine-tuning loss is the
distillation KL from the uncompressed net (a frozen copy taken at `start`, Sec. 3.3; labels
unused), else cross-entropy. DDP: codebooks and assignments are broadcast from rank 0.

`finalize` rounds the codebooks to float16 (what the file stores) and leaves plain layers with
W = C[a] (the codes kept as `module.pq_code`). The file (`export`, a container.py file of kind
"pq"): per layer the float16 codebook and the assignments packed at
log2(k) bits (pack.pack_bits, ceil(C_out m log2(k) / 8) bytes); every other tensor float32.
`load` rebuilds a plain model with identical predictions.
"""
from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.utils import parametrize

from ..pruning.channels import sliced
from ..swap import replace_module

KIND = "pq"  # container.py kind (before it: MAGIC LWBPQ1 | u64 | torch.save | crc32)
CALIBRATION = "_pq_calibration"  # attribute of the net: the latest training inputs (a deque)


@dataclass
class PQCode:
    """A quantized layer's codes: codebook (k, d) float32 holding float16 values, assignments
    (C_out, m) int64; weight = codebook[assign].reshape(shape)."""
    codebook: torch.Tensor
    assign: torch.Tensor


def rows(module: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """The layer's inputs as rows of D values, one per output position (im2col for a conv):
    output = rows @ W^T with W the (C_out, D) weight matrix."""
    if isinstance(module, nn.Conv2d):
        assert module.groups == 1 and module.padding_mode == "zeros", "plain convs only"
        cols = F.unfold(x, module.kernel_size, module.dilation, module.padding, module.stride)
        return cols.transpose(1, 2).reshape(-1, cols.shape[1])
    return x.reshape(-1, x.shape[-1])


def block_gram(x_rows: torch.Tensor, d: int) -> torch.Tensor:
    """H_j = x_j^T x_j for the D/d blocks of d columns: (m, d, d) float64."""
    x = x_rows.detach().double().reshape(len(x_rows), -1, d)
    return torch.einsum("nmd,nme->mde", x, x)


def subvectors(weight: torch.Tensor, d: int) -> torch.Tensor:
    """(C_out, m, d): sub-vector w_cj = W[c, j*d:(j+1)*d]."""
    return weight.detach().reshape(weight.shape[0], -1, d)


def objective(V: torch.Tensor, H: torch.Tensor, C: torch.Tensor, assign: torch.Tensor) -> float:
    """J = sum_{c,j} (v_cj - C[a_cj])^T H_j (v_cj - C[a_cj]) (see the module doc)."""
    E = V.double() - C.double()[assign]
    return float(torch.einsum("cjd,jde,cje->", E, H, E))


@torch.no_grad()
def em(V: torch.Tensor, H: torch.Tensor, k: int, iters: int = 20, seed: int = 0,
       chunk: int = 1 << 22) -> tuple[torch.Tensor, torch.Tensor, list[float]]:
    """EM of the module doc on sub-vectors V (C_out, m, d) with block Grams H (m, d, d) ->
    (codebook (k, d) float64, assignments (C_out, m), J after every E-step). float64 throughout;
    `chunk` bounds the distances held at once (values)."""
    c_out, m, d = V.shape
    V = V.double()
    VH = torch.einsum("cjd,jde->cje", V, H)  # v_cj^T H_j
    g = torch.Generator().manual_seed(seed)
    C = V.reshape(-1, d)[torch.randperm(c_out * m, generator=g)[:k]].clone()
    eps = 1e-9 * float(H.diagonal(dim1=1, dim2=2).mean()) + 1e-30
    eye, block = torch.eye(d, dtype=torch.float64), torch.arange(m).repeat(c_out)
    rows_at_once = max(1, chunk // (m * k))

    def e_step(C):  # argmin_k  C_k^T H_j C_k - 2 v_cj^T H_j C_k  (+ v^T H v, the same for all k)
        cHc = torch.einsum("kd,jde,ke->jk", C, H, C)
        return torch.cat([(cHc - 2 * VH[s:s + rows_at_once] @ C.T).argmin(2)
                          for s in range(0, c_out, rows_at_once)])

    history, prev = [], None
    for _ in range(iters):
        a = e_step(C)
        history.append(objective(V, H, C, a))
        if prev is not None and torch.equal(a, prev):
            return C, a, history
        prev, flat = a, a.reshape(-1)
        counts = torch.zeros(m, k, dtype=torch.float64).index_put_(
            (block, flat), torch.ones(len(flat), dtype=torch.float64), accumulate=True)
        A = torch.einsum("jk,jde->kde", counts, H) + eps * eye
        b = torch.zeros(k, d, dtype=torch.float64).index_add_(0, flat, VH.reshape(-1, d)) + eps * C
        C = torch.linalg.solve(A, b)
        size = counts.sum(0)
        empty = (size == 0).nonzero().flatten()
        if len(empty):  # no members: J does not depend on them; split the most populated ones
            donors = size.argsort(descending=True)[:len(empty)]
            noise = torch.randn(len(empty), d, generator=g, dtype=torch.float64)
            C[empty] = C[donors] + 1e-3 * C[donors].abs().mean() * noise
    a = e_step(C)
    history.append(objective(V, H, C, a))
    return C, a, history


class ProductQuantized(nn.Module):
    """Parametrization W -> codebook[assign] once `active`; W itself before (inactive)."""

    def __init__(self, shape: torch.Size, k: int, d: int):
        super().__init__()
        self.codebook = nn.Parameter(torch.zeros(k, d))
        self.register_buffer("assign", torch.zeros(shape[0], math.prod(shape[1:]) // d, dtype=torch.long))
        self.register_buffer("active", torch.zeros((), dtype=torch.bool))

    def forward(self, w: torch.Tensor) -> torch.Tensor:
        # both branches stay in the graph: every parameter gets a gradient (DDP needs that)
        return torch.where(self.active, self.codebook.to(w.dtype)[self.assign].reshape(w.shape), w)

    def right_inverse(self, w: torch.Tensor) -> torch.Tensor:
        return w


def pq_of(module: nn.Module) -> ProductQuantized | None:
    if parametrize.is_parametrized(module, "weight"):
        return next((p for p in module.parametrizations.weight if isinstance(p, ProductQuantized)), None)
    return None


def _remember_input(net: nn.Module, args) -> None:
    """Forward pre-hook of the net: keep the latest training inputs (calibration set)."""
    if net.training:
        getattr(net, CALIBRATION).append(args[0].detach())


def _plain(net: nn.Module) -> nn.Module:
    """Parametrized layers replaced by plain ones holding the weight they compute, the
    calibration hook and its inputs removed (in place). New modules rather than
    `remove_parametrizations`: that edits the class a deep copy shares with the original."""
    for name, m in [(n, m) for n, m in net.named_modules() if parametrize.is_parametrized(m)]:
        replace_module(net, name, sliced(m))
    for key in [k for k, h in net._forward_pre_hooks.items() if h is _remember_input]:
        del net._forward_pre_hooks[key]
    net.__dict__.pop(CALIBRATION, None)
    return net


def _flat(tree: Mapping, prefix: str = "") -> dict:
    """{classifier: {1: 8}} -> {"classifier.1": 8} (a dotted override nests the layer name)."""
    out = {}
    for key, v in tree.items():
        name = f"{prefix}{key}"
        out.update(_flat(v, name + ".") if isinstance(v, Mapping) else {name: v})
    return out
