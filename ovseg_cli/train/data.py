"""Training data: the clip dataset of the seen classes, in an order a resumed run can replay.

Each rank reads its share of a seeded permutation per epoch; the sampler yields
``(epoch, index)`` keys, so the dataset draws each clip's augmentation from
(seed, epoch, index) alone. Skipping the batches already used, a resumed run then sees
exactly the clips an uninterrupted one would have.
"""

from __future__ import annotations

import signal
from collections.abc import Iterator

import torch
from torch.utils.data import DataLoader, Sampler

from ovseg_cli.datasets.clips import ClipDataset, ClipSettings
from ovseg_cli.datasets.index import PreparedIndex
from ovseg_cli.errors import OvsegError
from ovseg_cli.train.config import TrainConfig


class ResumableSampler(Sampler[tuple[int, int]]):
    """This rank's share of a per-epoch permutation, whole batches only, from a given batch."""

    def __init__(self, n: int, batch: int, rank: int, world: int, seed: int) -> None:
        self.n, self.batch, self.rank, self.world, self.seed = n, batch, rank, world, seed
        self.batches_per_epoch = (n // world) // batch
        if self.batches_per_epoch == 0:
            raise OvsegError(
                f"the training split has {n} labelled clips: fewer than data.batch ({batch}) "
                f"x processes ({world}); lower data.batch"
            )
        self.epoch = 0
        self.skip = 0

    def set_position(self, epoch: int, skip_batches: int) -> None:
        """Start the next iteration at this epoch, after ``skip_batches`` used batches."""
        self.epoch, self.skip = epoch, skip_batches

    def __iter__(self) -> Iterator[tuple[int, int]]:
        g = torch.Generator().manual_seed(self.seed * 100_003 + self.epoch)
        perm = torch.randperm(self.n, generator=g).tolist()
        mine = perm[self.rank : self.world * (self.n // self.world) : self.world]
        mine = mine[: self.batches_per_epoch * self.batch][self.skip * self.batch :]
        for i in mine:
            yield (self.epoch, i)

    def __len__(self) -> int:
        return (self.batches_per_epoch - self.skip) * self.batch


def _quiet_worker(_: int) -> None:
    # stop signals are for the main process, which checkpoints and stops the workers itself
    # (a terminal's SIGHUP and a scheduler's SIGTERM reach the whole process group)
    for name in ("SIGINT", "SIGTERM", "SIGHUP"):
        if hasattr(signal, name):
            signal.signal(getattr(signal, name), signal.SIG_IGN)


def loader_workers(cfg: TrainConfig) -> int:
    """DataLoader processes: ``data.workers``, at most one per usable core (more only wait, and
    torch warns). The clips do not depend on it: their randomness comes from (seed, epoch, i)."""
    from ovseg_cli.threads import usable_cores

    return min(cfg.data.workers, usable_cores())


def training_loader(
    index: PreparedIndex, cfg: TrainConfig, rank: int, world: int
) -> tuple[ClipDataset, ResumableSampler, DataLoader]:
    """Dataset (seen classes learnt, unseen masked: IV-C), sampler and loader of a rank."""
    d = cfg.data
    settings = ClipSettings(
        gaps=cfg.model.gaps, crop=d.crop, scale=d.scale, flip=d.flip, jitter=d.jitter,
        mask_input=d.mask_input, train=True,
    )  # fmt: skip
    dataset = ClipDataset(
        index, "train", classes=index.seen, settings=settings, mask_classes=index.unseen,
        seed=cfg.run.seed,
    )  # fmt: skip
    sampler = ResumableSampler(len(dataset), d.batch, rank, world, cfg.run.seed)
    workers = loader_workers(cfg)
    loader = DataLoader(
        dataset,
        batch_size=d.batch,
        sampler=sampler,
        drop_last=True,
        num_workers=workers,
        persistent_workers=workers > 0,
        pin_memory=torch.cuda.is_available(),
        worker_init_fn=_quiet_worker if workers > 0 else None,
        prefetch_factor=4 if workers > 0 else None,
    )
    return dataset, sampler, loader
