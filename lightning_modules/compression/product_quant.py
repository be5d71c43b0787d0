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

import copy
import math
from collections import deque
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.utils import parametrize

from . import container
from .errors import ConfigError, FileFormatError
from .filter_prune import _replace, _sliced
from .method import Method, state_mismatch
from .pack import pack_bits, unpack_bits
from .prune import broadcast_, layers
from .schedule import Schedule

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
        _replace(net, name, _sliced(m))
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


class ProductQuant(Method):
    """`method=pq`: see the module doc and conf/method/pq.yaml for the keys."""

    def __init__(self, name: str = "pq", centroids: int = 256, block_size: Mapping | None = None,
                 skip: Sequence[str] = ("first",), interval: str = "epoch", start: int = 1,
                 calibration_batches: int = 16, em_iters: int = 20, distill: bool = True,
                 temperature: float = 1.0, seed: int = 0):
        super().__init__(name)
        if isinstance(centroids, bool) or not isinstance(centroids, int) or centroids < 2 \
                or centroids > 65536 or centroids & (centroids - 1):
            raise ConfigError(f"method.centroids={centroids}: must be a power of two in 2..65536 "
                              "(log2(k)-bit assignments)")
        self.block_size = _flat(block_size or {"conv": "kernel", "fc": 4})
        for key in ("conv", "fc"):
            if key not in self.block_size:
                raise ConfigError(f"method.block_size={self.block_size}: needs the keys conv and fc")
        for key, v in self.block_size.items():
            kernel = v == "kernel" and key != "fc"
            if not kernel and (isinstance(v, bool) or not isinstance(v, int) or v < 1):
                raise ConfigError(f"method.block_size.{key}={v}: must be a positive integer"
                                  + ("" if key == "fc" else " or kernel (= K*K)"))
        self.schedule = Schedule(start, start, 1, interval, "method", min_start=1)
        for key, v, lo in (("calibration_batches", calibration_batches, 1),
                           ("em_iters", em_iters, 1), ("seed", seed, 0)):
            if isinstance(v, bool) or not isinstance(v, int) or v < lo:
                raise ConfigError(f"method.{key}={v}: must be an integer >= {lo}")
        if isinstance(temperature, bool) or not isinstance(temperature, (int, float)) or temperature <= 0:
            raise ConfigError(f"method.temperature={temperature}: must be a number > 0")
        self.k, self.skip = centroids, list(skip)
        self.calibration_batches, self.em_iters, self.seed = calibration_batches, em_iters, seed
        self.distill, self.temperature = bool(distill), float(temperature)
        self.names: list[str] = []
        self.history: dict[str, list[float]] = {}  # J after every E-step, per layer
        self.teacher: nn.Module | None = None

    def block_of(self, name: str, module: nn.Module) -> int:
        """d for this layer; ConfigError if it does not divide the layer's row length D."""
        conv = isinstance(module, nn.Conv2d)
        key = name if name in self.block_size else ("conv" if conv else "fc")
        d = self.block_size[key]
        d = module.weight[0, 0].numel() if d == "kernel" else d
        D = module.weight[0].numel()
        if D % d:
            raise ConfigError(f"method.block_size.{key}={self.block_size[key]}: must divide the "
                              f"row length of {name} ({D} = weights per output)")
        return d

    def apply(self, model: nn.Module) -> nn.Module:
        unknown = sorted(set(self.block_size) - {"conv", "fc"} - {n for n, _ in layers(model)})
        if unknown:
            raise ConfigError(f"method.block_size.{unknown[0]}: not a Conv2d/Linear of the model")
        self.names = []
        for name, m in layers(model, self.skip):
            if pq_of(m) is None:
                d = self.block_of(name, m)
                n = m.weight.numel() // d
                k = min(self.k, 2 ** int(math.log2(n)))
                parametrize.register_parametrization(m, "weight", ProductQuantized(m.weight.shape, k, d))
            self.names.append(name)
        if not hasattr(model, CALIBRATION):
            setattr(model, CALIBRATION, deque(maxlen=self.calibration_batches))
            model.register_forward_pre_hook(_remember_input)
        return model

    def step(self, model: nn.Module, t: int) -> None:
        self.quantize(model)

    @torch.no_grad()
    def quantize(self, model: nn.Module) -> None:
        """Teacher copy, then EM layer by layer on the calibration inputs (see the module doc)."""
        inputs = list(getattr(model, CALIBRATION, ()))
        if not inputs:
            raise RuntimeError("product quantization: no calibration inputs (apply, then train)")
        if self.distill:
            self.teacher = _plain(copy.deepcopy(model)).eval().requires_grad_(False)
        mods, was = dict(model.named_modules()), model.training
        model.eval()
        try:
            for i, name in enumerate(self.names):
                m, pq = mods[name], pq_of(mods[name])
                d = pq.codebook.shape[1]
                H = torch.zeros(pq.assign.shape[1], d, d, dtype=torch.float64, device=m.weight.device)

                def gram(mod, args, H=H, d=d):
                    H.add_(block_gram(rows(mod, args[0]), d))
                hook = m.register_forward_pre_hook(gram)
                for x in inputs:
                    model(x)
                hook.remove()
                W = m.parametrizations.weight.original
                C, a, self.history[name] = em(subvectors(W, d).cpu(), H.cpu(), pq.codebook.shape[0],
                                              self.em_iters, self.seed + i)
                pq.codebook.copy_(broadcast_(C.to(pq.codebook)))
                pq.assign.copy_(broadcast_(a.to(pq.assign.device)))
                pq.active.fill_(True)
        finally:
            model.train(was)
        setattr(model, CALIBRATION, deque(maxlen=0))  # no more inputs kept

    def loss(self, logits, target, batch):
        if self.teacher is None:
            return None
        T = self.temperature
        with torch.no_grad():
            teacher = self.teacher(batch[0]).float()
        return F.kl_div(F.log_softmax(logits.float() / T, 1), F.log_softmax(teacher / T, 1),
                        log_target=True, reduction="batchmean") * T * T

    @torch.no_grad()
    def finalize(self, model: nn.Module) -> nn.Module:
        """Codebooks rounded to float16; plain layers W = C[a] carrying `pq_code`."""
        codes = {}
        for name, m in model.named_modules():
            pq = pq_of(m)
            if pq is not None and bool(pq.active):
                pq.codebook.copy_(pq.codebook.half().float())
                codes[name] = PQCode(pq.codebook.detach().clone(), pq.assign.clone())
        _plain(model)
        for name, code in codes.items():
            model.get_submodule(name).pq_code = code
        self.teacher = None
        return model

    def export(self, model: nn.Module, path: str | Path) -> Path:
        """See the module doc: float16 codebooks, log2(k)-bit packed assignments, float32 rest."""
        if any(pq_of(m) is not None for m in model.modules()) or hasattr(model, CALIBRATION):
            model = self.finalize(copy.deepcopy(model))
        coded = {n: m.pq_code for n, m in model.named_modules() if hasattr(m, "pq_code")}
        entries = []
        for name, code in coded.items():
            bits = int(math.log2(len(code.codebook)))
            entries.append({"name": name, "shape": list(model.get_submodule(name).weight.shape),
                            "bits": bits, "codebook": code.codebook.detach().cpu().half(),
                            "codes": torch.from_numpy(pack_bits(code.assign.cpu().numpy(), bits))})
        state = {k: v.detach().cpu() for k, v in model.state_dict().items()
                 if k.removesuffix(".weight") not in coded}
        return container.write(path, KIND, {"model": type(model).__name__, "layers": entries, "state": state})

    def load(self, model: nn.Module, path: str | Path) -> nn.Module:
        """A model of the file's class (untouched) -> a plain copy with the file's weights."""
        blob = container.read(path, KIND)
        fail = lambda why: FileFormatError(f"{path}: {why}")  # noqa: E731
        if blob.get("model") != type(model).__name__:
            raise fail(f"does not match the model (a {blob.get('model')} file, "
                       f"a {type(model).__name__} model)")
        state, coded = {}, {}
        try:
            state.update(blob["state"])
            for layer in blob["layers"]:
                C, shape = layer["codebook"].float(), layer["shape"]
                n = math.prod(shape) // C.shape[1]
                a = torch.from_numpy(unpack_bits(layer["codes"].numpy(), layer["bits"], n))
                if len(C) != 2 ** layer["bits"] or (n and int(a.max()) >= len(C)):
                    raise ValueError("codes outside the codebook")
                coded[layer["name"]] = PQCode(C, a.reshape(shape[0], -1))
                state[layer["name"] + ".weight"] = C[a].reshape(shape)
        except (ValueError, RuntimeError, KeyError, TypeError, AttributeError) as err:
            raise fail(f"unreadable content ({type(err).__name__})") from None
        out = _plain(copy.deepcopy(model))
        if (key := state_mismatch(out, state)) is not None:
            raise fail(f"does not match the model ({key})")
        out.load_state_dict(state)
        for name, code in coded.items():
            out.get_submodule(name).pq_code = code
        return out


def payload(path: str | Path) -> dict:
    """Bytes by kind in a PQ file: per layer {codes, codebook, bits}, the file."""
    blob = container.read(path, KIND)
    return {"layers": {m["name"]: {"codes": m["codes"].numel(), "codebook": 2 * m["codebook"].numel(),
                                   "bits": m["bits"], "n": math.prod(m["shape"]) // m["codebook"].shape[1]}
                       for m in blob["layers"]}, "file": Path(path).stat().st_size}
