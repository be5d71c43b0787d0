"""Shared by the Deep Compression tests (a plain module, not a conftest): run a method's
schedule by hand with a few SGD steps between the scheduled times, as the callback would."""
import torch
import torch.nn.functional as F


def sgd_steps(model, steps=2, lr=0.05, seed=0, optimizer=None):
    """A few SGD (momentum, weight decay) steps on random Fashion-MNIST-shaped data."""
    g = torch.Generator().manual_seed(seed)
    opt = optimizer or torch.optim.SGD(model.parameters(), lr=lr, momentum=0.9, weight_decay=5e-4)
    model.train()
    for _ in range(steps):
        x, y = torch.randn(8, 1, 28, 28, generator=g), torch.randint(0, 10, (8,), generator=g)
        opt.zero_grad()
        F.cross_entropy(model(x), y).backward()
        opt.step()
    return opt


def run_schedule(method, model, steps=2, optimizer=None):
    """apply() already done: call on_time for every epoch up to the schedule's last one (and one
    more), training `steps` SGD steps after each, with one optimizer for the whole run."""
    interval, last, _ = method.last_time()
    opt = optimizer or torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9, weight_decay=5e-4)
    for t in range(last + 2):
        method.on_time(model, t, interval)
        sgd_steps(model, steps, seed=t, optimizer=opt)
    return model


def outputs(model, seed=123):
    model.eval()
    with torch.no_grad():
        return model(torch.randn(32, 1, 28, 28, generator=torch.Generator().manual_seed(seed)))
