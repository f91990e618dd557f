"""Data loaders for training (shuffled, sharded per rank) and evaluation (in order), and the
collation of detection batches."""

from __future__ import annotations

from typing import Callable

from torch.utils.data import DataLoader, Dataset, DistributedSampler, Subset


def train_loader(dataset: Dataset, batch_size: int, *, seed: int = 0, rank: int = 0, world_size: int = 1,
                 workers: int = 0, collate_fn: Callable | None = None) -> DataLoader:
    """Shuffled training batches; each rank gets its own share of every epoch.

    The order depends only on ``seed`` and the epoch (``loader.sampler.set_epoch``), so a
    resumed run sees the batches it would have seen; workers are started anew each epoch,
    seeded from the main process's generator (which the loop reseeds every epoch), so their
    augmentations repeat too. Incomplete last batches are dropped. ``collate_fn`` makes
    batches of samples that do not stack (:func:`collate_detection`).
    """
    sampler = DistributedSampler(dataset, num_replicas=world_size, rank=rank, shuffle=True, seed=seed)
    drop_last = len(sampler) > batch_size
    return DataLoader(dataset, batch_size=batch_size, sampler=sampler, num_workers=workers, drop_last=drop_last,
                      collate_fn=collate_fn)


def eval_loader(dataset: Dataset, batch_size: int, *, rank: int = 0, world_size: int = 1,
                workers: int = 0) -> DataLoader:
    """Batches in order; rank r of w gets samples r, r + w, … (no padding, so that summed
    counts over the ranks are exact)."""
    if world_size > 1:
        dataset = Subset(dataset, range(rank, len(dataset), world_size))
    return DataLoader(dataset, batch_size=batch_size, shuffle=False, num_workers=workers)


def collate_detection(batch: list[tuple]) -> tuple[list, list]:
    """A detection batch as ``(images, targets)`` lists: images of different sizes and
    targets with different numbers of objects do not stack, and torchvision's detectors take
    lists."""
    images, targets = zip(*batch)
    return list(images), list(targets)
