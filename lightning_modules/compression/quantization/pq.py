"""`method=pq`: product quantization (Stock et al. 2020, "And the Bit Goes Down") as a method: on
its schedule (one step at `start`) the latest training inputs calibrate EM layer by layer
(product.py), then the codebooks fine-tune, by distillation from the net as it was at `start`.
The file: float16 codebooks, log2(k)-bit packed assignments, float32 rest (a container.py file).
"""
from __future__ import annotations

import copy
import math
import weakref
from collections import deque
from collections.abc import Mapping, Sequence
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.utils import parametrize

from .. import container
from ..errors import ConfigError, FileFormatError
from ..method import Method, load_state, read_model_file
from ..pruning.magnitude import broadcast_
from ..schedule import Schedule
from ..select import candidates, choose, from_kind_map, parse
from .pack import pack_bits, unpack_bits
from .product import (CALIBRATION, KIND, PQCode, ProductQuantized, _flat, _plain, _remember_input,
                      block_gram, em, pq_of, rows, subvectors)


class ProductQuant(Method):
    """`method=pq`: see the module doc and conf/method/pq.yaml for the keys."""

    def __init__(self, name: str = "pq", centroids: int = 256, block_size: Mapping | None = None,
                 layers: Sequence[Mapping] = ({"name": "*"}, {"name": "first", "quantize": False}),
                 interval: str = "epoch", start: int = 1,
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
        self.schedule = Schedule(start, None, 1, interval, "method", min_start=1)
        for key, v, lo in (("calibration_batches", calibration_batches, 1),
                           ("em_iters", em_iters, 1), ("seed", seed, 0)):
            if isinstance(v, bool) or not isinstance(v, int) or v < lo:
                raise ConfigError(f"method.{key}={v}: must be an integer >= {lo}")
        if isinstance(temperature, bool) or not isinstance(temperature, (int, float)) or temperature <= 0:
            raise ConfigError(f"method.temperature={temperature}: must be a number > 0")
        self.k = centroids
        # the block sizes per kind / layer name, then `layers` (a rule's block_size overrides them)
        self.rules = (from_kind_map(self.block_size, "block_size", "method.block_size")
                      + parse(layers, "method.layers", extra=("block_size",)))
        self.calibration_batches, self.em_iters, self.seed = calibration_batches, em_iters, seed
        self.distill, self.temperature = bool(distill), float(temperature)
        self.names: list[str] = []
        self.history: dict[str, list[float]] = {}  # J after every E-step, per layer
        self.teacher: nn.Module | None = None
        self._model = lambda: None  # a weak reference to the net `apply` returned (the run's)

    def block_of(self, name: str, module: nn.Module, d) -> int:
        """d (an integer or "kernel") for this layer; ConfigError if it does not divide the
        layer's row length D."""
        key = name if name in self.block_size else ("conv" if isinstance(module, nn.Conv2d) else "fc")
        d = module.weight[0, 0].numel() if d == "kernel" else d
        D = module.weight[0].numel()
        if isinstance(d, bool) or not isinstance(d, int) or d < 1 or D % d:
            raise ConfigError(f"method.block_size.{key}={d}: must divide the "
                              f"row length of {name} ({D} = weights per output)")
        return d

    def apply(self, model: nn.Module) -> nn.Module:
        unknown = sorted(set(self.block_size) - {"conv", "fc"} - {n for n, _ in candidates(model)})
        if unknown:
            raise ConfigError(f"method.block_size.{unknown[0]}: not a Conv2d/Linear of the model")
        chosen = choose(model, self.rules)
        for name, settings in chosen.items():
            m = model.get_submodule(name)
            if pq_of(m) is None:
                d = self.block_of(name, m, settings["block_size"])
                n = m.weight.numel() // d
                k = min(self.k, 2 ** int(math.log2(n)))
                parametrize.register_parametrization(m, "weight", ProductQuantized(m.weight.shape, k, d))
        self.names = list(chosen)
        self._model = weakref.ref(model)
        if not hasattr(model, CALIBRATION):
            setattr(model, CALIBRATION, deque(maxlen=self.calibration_batches))
            model.register_forward_pre_hook(_remember_input)
        return model

    def step(self, model: nn.Module, t: int) -> None:
        self.quantize(model)

    # a mid-run checkpoint (callbacks/resume.py) holds what the EM step and the fine-tuning read
    # besides the net: the calibration inputs gathered so far (before the step), the teacher (the
    # net as it was at the step, for distillation after it) and the EM objective's history
    def state_dict(self) -> dict:
        out = super().state_dict()
        model = self._model()
        kept = getattr(model, CALIBRATION, None) if model is not None else None
        out["calibration"] = None if kept is None else [x.detach().cpu() for x in kept]
        out["calibration_maxlen"] = None if kept is None else kept.maxlen
        out["teacher"] = None if self.teacher is None else \
            {k: v.detach().cpu() for k, v in self.teacher.state_dict().items()}
        out["history"] = copy.deepcopy(self.history)
        return out

    def load_state_dict(self, state: dict) -> None:
        super().load_state_dict(state)
        missing = [k for k in ("calibration", "calibration_maxlen", "teacher", "history") if k not in state]
        if missing:
            raise FileFormatError(f"method {self.name}: checkpoint lacks its state {missing[0]!r}")
        model = self._model()
        if model is None:
            raise RuntimeError("product quantization: load_state_dict before apply")
        device = next(model.parameters()).device
        self.history = copy.deepcopy(state["history"])
        if state["calibration"] is not None:
            setattr(model, CALIBRATION, deque([x.to(device) for x in state["calibration"]],
                                              maxlen=state["calibration_maxlen"]))
        self.teacher = None
        if state["teacher"] is not None:  # the same structure as at the step: the net made plain
            self.teacher = _plain(copy.deepcopy(model)).eval().requires_grad_(False)
            self.teacher.load_state_dict(state["teacher"])

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
        blob = read_model_file(path, KIND, model)
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
            raise FileFormatError(f"{path}: unreadable content ({type(err).__name__})") from None
        out = load_state(_plain(copy.deepcopy(model)), state, path)
        for name, code in coded.items():
            out.get_submodule(name).pq_code = code
        return out


def payload(path: str | Path) -> dict:
    """Bytes by kind in a PQ file: per layer {codes, codebook, bits}, the file."""
    blob = container.read(path, KIND)
    return {"layers": {m["name"]: {"codes": m["codes"].numel(), "codebook": 2 * m["codebook"].numel(),
                                   "bits": m["bits"], "n": math.prod(m["shape"]) // m["codebook"].shape[1]}
                       for m in blob["layers"]}, "file": Path(path).stat().st_size}
