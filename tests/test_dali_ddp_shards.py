"""Under DDP each rank reads its own shard: two real gloo processes build the DALI (CPU) and
torchvision loaders from the same fixture files; their shards are disjoint, together they cover
the dataset, and every rank takes the same number of training steps."""
import json
import os

import pytest
import torch.distributed as dist
import torch.multiprocessing as mp

from benchmarks.image_files import write_cifar, write_imagefolder

pytest.importorskip("nvidia.dali", reason="NVIDIA DALI is not installed (pip install nvidia-dali-cuda120)")
# imported here, before the fork: the two ranks start in a second instead of importing torch,
# Lightning and DALI again each (no DALI pipeline exists in the parent when it forks)
import datamodules.dali  # noqa: E402,F401


def _worker(rank: int, world: int, init: str, root: str, out: str):
    import torch
    torch.set_num_threads(1)
    from datamodules.cifar import CIFARDataModule
    from datamodules.dali import CIFARDALIDataModule, ImageNetDALIDataModule
    from datamodules.imagenet import MEAN, STD
    from benchmarks.image_files import identify

    dist.init_process_group("gloo", init_method=init, rank=rank, world_size=world)
    try:
        res = {}
        dm = ImageNetDALIDataModule(root=os.path.join(root, "inet"), batch_size=2, eval_batch_size=2,
                                    num_workers=0, device="cpu", num_threads=1)
        dm.setup()
        for split, loader in (("train", dm.train_dataloader()), ("val", dm.val_dataloader())):
            ids = [i for x, _ in loader for i in identify(x, MEAN, STD)]
            res[f"imagenet_{split}"] = {"len": len(loader), "ids": ids}
        # CIFAR: samples are told apart by their pixels (random images), via the test split
        kw = dict(root=os.path.join(root, "cifar"), batch_size=4, eval_batch_size=3, val_size=5,
                  num_workers=0, download=False)
        cd = CIFARDALIDataModule("cifar10", **kw, device="cpu", num_threads=1)
        cd.setup()
        ref = torch.cat([x for x, _ in CIFARDataModule.test_dataloader(cd)])  # all 11 images, one process

        def which(x):
            return [int(((ref - xi).abs().flatten(1).max(1).values < 1e-4).nonzero()[0]) for xi in x]
        res["cifar_test"] = {"len": len(cd.test_dataloader()),
                             "ids": [i for x, _ in cd.test_dataloader() for i in which(x)]}
        tr = cd.train_dataloader()
        res["cifar_train"] = {"len": len(tr), "ids": [], "batches": sum(1 for _ in tr)}
        with open(os.path.join(out, f"rank{rank}.json"), "w") as f:
            json.dump(res, f)
    finally:
        dist.destroy_process_group()


@pytest.mark.slow
def test_ddp_ranks_read_disjoint_shards_covering_the_data(tmp_path):
    write_imagefolder(tmp_path / "inet", classes=("a", "b", "c"), per_class=3, val_per_class=1)  # 9 train, 3 val
    write_cifar(tmp_path / "cifar", n_train=45, n_test=11)  # train split 40: 20 per rank, 5 steps of 4
    mp.start_processes(_worker, args=(2, f"file://{tmp_path / 'pg'}", str(tmp_path), str(tmp_path)),
                       nprocs=2, join=True, start_method="fork")
    r = [json.loads((tmp_path / f"rank{k}.json").read_text()) for k in range(2)]
    for key, n, exact in (("imagenet_train", 9, False), ("imagenet_val", 3, True), ("cifar_test", 11, True)):
        a, b = r[0][key]["ids"], r[1][key]["ids"]
        assert not set(a) & set(b), key  # no sample on both ranks
        assert len(a) == len(set(a)) and len(b) == len(set(b)), key
        if exact:  # evaluation: together exactly the dataset
            assert sorted(a + b) == list(range(9, 12) if key == "imagenet_val" else range(n)), key
        else:  # training: floor(9 / 2) = 4 each, batches of 2, the one left over is dropped
            assert len(a) == len(b) == 4 and len(set(a + b)) == 8 and set(a + b) <= set(range(9)), key
    for key in ("imagenet_train", "cifar_train"):
        assert r[0][key]["len"] == r[1][key]["len"], key  # same number of steps on every rank
    assert r[0]["imagenet_train"]["len"] == 2 and r[0]["cifar_train"]["len"] == 5
    assert r[0]["cifar_train"]["batches"] == r[1]["cifar_train"]["batches"] == 5
