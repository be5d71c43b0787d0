"""Shared by the Deep Compression tests (a plain module, not a conftest): the compositions of
conf/method/{prune,share,prune_share,deep_compression}.yaml built in Python, and a method's
schedule run by hand with a few SGD steps between the scheduled times, as the callback would."""
import torch
import torch.nn.functional as F

from lightning_modules.compression.coding.deep_compression import DeepCompressionFile
from lightning_modules.compression.method import Compose
from lightning_modules.compression.pruning.magnitude import Prune
from lightning_modules.compression.coding.share import Share


def deep_compression(prune=None, share=None, huffman=True, index_bits=None, float_bits=32,
                     name="deep_compression"):
    """Compose(prune, share, code) as the YAMLs build it; prune / share: their kwargs or None."""
    parts = {}
    if prune is not None:
        parts["prune"] = Prune(**prune)
    if share is not None:
        parts["share"] = Share(**share)
    parts["code"] = DeepCompressionFile(index_bits=index_bits, huffman=huffman, float_bits=float_bits)
    return Compose(name=name, **parts)


def prune_method(index_bits=None, **prune):
    """method=prune: Compose(prune, code(huffman=false))."""
    return deep_compression(prune=prune, huffman=False, index_bits=index_bits, name="prune")


def share_method(**share):
    """method=share: Compose(share, code(huffman=false))."""
    return deep_compression(share=share, huffman=False, name="share")


def prune_share(prune, share, index_bits=None):
    """method=prune_share: Compose(prune, share, code(huffman=false))."""
    return deep_compression(prune=prune, share=share, huffman=False, index_bits=index_bits,
                            name="prune_share")


def last_time(method):
    """(interval, last scheduled time) over a method's (or composition's) parts."""
    parts = method.methods if isinstance(method, Compose) else [method]
    scheds = [m.schedule for m in parts if m.schedule is not None]
    return scheds[-1].interval, max(s.last for s in scheds)


def sgd_steps(model, steps=2, lr=0.05, seed=0, optimizer=None, method=None):
    """A few SGD (momentum, weight decay) steps on random Fashion-MNIST-shaped data; with a
    `method`, its after_step hook after every step (as the harness's MethodHooks calls it)."""
    g = torch.Generator().manual_seed(seed)
    opt = optimizer or torch.optim.SGD(model.parameters(), lr=lr, momentum=0.9, weight_decay=5e-4)
    model.train()
    for _ in range(steps):
        x, y = torch.randn(8, 1, 28, 28, generator=g), torch.randint(0, 10, (8,), generator=g)
        opt.zero_grad()
        F.cross_entropy(model(x), y).backward()
        opt.step()
        if method is not None:
            method.after_step(model, opt.param_groups[0]["lr"])
    return opt


def run_schedule(method, model, steps=2, optimizer=None):
    """apply() already done: call on_time for every epoch up to the schedule's last one (and one
    more), training `steps` SGD steps after each, with one optimizer for the whole run."""
    interval, last = last_time(method)
    opt = optimizer or torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9, weight_decay=5e-4)
    for t in range(last + 2):
        method.on_time(model, t, interval)
        sgd_steps(model, steps, seed=t, optimizer=opt)
    return model


def outputs(model, seed=123):
    model.eval()
    with torch.no_grad():
        return model(torch.randn(32, 1, 28, 28, generator=torch.Generator().manual_seed(seed)))
