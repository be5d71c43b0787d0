"""Under DDP each test image is counted exactly once (Lightning's DistributedSampler would pad the
last shard with repeats): 3 ranks over a set whose size 3 does not divide."""
from types import SimpleNamespace

import pytest
import torch
from torch.utils.data import TensorDataset

from tests.conftest import FAST, only_record, train


def test_eval_loaders_shard_without_padding_and_lightning_keeps_them():
    import pytorch_lightning as pl
    from pytorch_lightning.trainer.states import RunningStage

    from datamodules.common import make_loader
    ds = TensorDataset(torch.arange(100), torch.zeros(100, dtype=torch.long))
    seen = []
    for rank in range(3):
        loader = make_loader(ds, 16, train=False, num_workers=0,
                             trainer=SimpleNamespace(world_size=3, global_rank=rank))
        seen += [int(i) for x, _ in loader for i in x]
    assert sorted(seen) == list(range(100))  # 34 + 33 + 33: each image once, none repeated
    # a real 3-process DDP Trainer (not launched): Lightning injects its padded sampler into a plain
    # eval loader, and leaves ours in place
    trainer = pl.Trainer(accelerator="cpu", devices=3, strategy="ddp", logger=False)
    ours = make_loader(ds, 16, train=False, num_workers=0, trainer=trainer)
    assert trainer._data_connector._prepare_dataloader(ours, False, RunningStage.TESTING) is ours
    plain = make_loader(ds, 16, train=False, num_workers=0)
    padded = trainer._data_connector._prepare_dataloader(plain, False, RunningStage.TESTING)
    assert len(list(padded.sampler)) == 34  # what rank 0 would count with Lightning's sampler: 3 x 34 = 102


@pytest.mark.slow
def test_three_ddp_processes_count_each_test_image_once(tmp_path, fmnist):
    # 1000 test images on 3 ranks (334, 333, 333); batches of 111: rank 0 runs 4 batches, the others 3
    p = train([*FAST, "trainer=ddp", "trainer.devices=3", "data.eval_batch_size=111"], tmp_path,
              env={"OMP_NUM_THREADS": "1"})
    assert p.returncode == 0, p.stderr[-3000:]
    assert "Starting with 3 processes" in p.stdout + p.stderr
    rec = only_record(tmp_path)
    assert rec["status"] == "ok" and rec["world_size"] == 3
    assert rec["test_samples"] == 1000
    # one process, the same weights, the same 1000 images
    from lightning_modules.compression.method import FullPrecision
    from lightning_modules.models import LeNet300
    net = FullPrecision().load(LeNet300(), rec["model_file"]).eval()
    with torch.no_grad():
        correct = int((net(fmnist.x_test[:1000]).argmax(1) == fmnist.y_test[:1000]).sum())
    assert rec["top1"] == pytest.approx(correct / 1000, abs=1e-6)


@pytest.mark.slow
def test_three_ddp_processes_count_each_cifar_test_image_once(tmp_path):
    # the DataLoader path (CIFAR, ImageNet): 20 test images on 3 ranks (7, 7, 6), batches of 3:
    # 3, 3 and 2 batches; ResNet-8's BatchNorm buffers make DDP broadcast on the first test batch
    from benchmarks.image_files import write_cifar
    write_cifar(tmp_path / "cifar", n_train=40, n_test=20)
    p = train(["data=cifar10", f"data.root={tmp_path / 'cifar'}", "data.download=false", "data.val_size=8",
               "data.num_workers=0", "data.batch_size=4", "data.eval_batch_size=3", "model=resnet8",
               "trainer.max_epochs=1", "trainer.limit_val_batches=0", "measure.warmup_steps=0",
               "trainer=ddp", "trainer.devices=3"], tmp_path / "res", env={"OMP_NUM_THREADS": "1"})
    assert p.returncode == 0, p.stderr[-3000:]
    rec = only_record(tmp_path / "res")
    assert rec["status"] == "ok" and rec["world_size"] == 3 and rec["test_samples"] == 20
    from datamodules.cifar import CIFARDataModule
    from lightning_modules.compression.method import FullPrecision
    from lightning_modules.models import CifarResNet
    dm = CIFARDataModule("cifar10", root=str(tmp_path / "cifar"), download=False, val_size=8, num_workers=0,
                         eval_batch_size=20)
    dm.setup()
    (x, y), = list(dm.test_dataloader())  # one process: all 20 images in one batch
    net = FullPrecision().load(CifarResNet(depth=8, width=16, num_classes=10), rec["model_file"]).eval()
    with torch.no_grad():
        correct = int((net(x).argmax(1) == y).sum())
    assert rec["top1"] == pytest.approx(correct / 20, abs=1e-6)
