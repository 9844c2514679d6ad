"""Split bookkeeping shared by the tasks: per-split seeds, opening a dataset, assembling splits.

Split seeds: ``split_seed(seed, split) = seed * 1000 + offset`` with offsets ``train: 1``,
``val: 2``, ``eval: 3``, so every split draws from its own stream and changing one split's size
never changes another split's draw.

File-backed tasks (``science``, ``tooluse``) build their splits with :func:`assemble_splits`:

- ``paths[split]`` names a ``datasets.load_from_disk`` directory (or a hub dataset id; see
  :func:`open_dataset`); ``None`` means the split has no file.
- ``val`` without a path is carved from train: a shuffle of the train rows seeded with
  ``split_seed(seed, "val")`` puts its first ``sizes["val"]`` rows in val and the rest stay in
  train, so the two are disjoint. ``sizes["val"]`` of ``None`` or 0 carves nothing (``[]``);
  there is nothing to carve when train has no path either.
- ``sizes[split]`` caps a split (``None`` = all rows). A capped ``train`` or ``val`` keeps a
  random subset (seeded with ``split_seed(seed, split)``); a capped ``eval`` keeps its FIRST
  rows, so the evaluation set does not change with the training seed.
- Every split is returned in source-row order.
"""

from __future__ import annotations

import os
import random
from collections.abc import Callable, Mapping
from typing import Any

from caopd.tasks.base import TaskExample, TaskDataError

SPLITS = ("train", "val", "eval")
_SPLIT_OFFSETS = {"train": 1, "val": 2, "eval": 3}


def split_seed(seed: int, split: str) -> int:
    """The seed of ``split`` derived from the run seed: ``seed * 1000 + offset(split)``."""
    if split not in _SPLIT_OFFSETS:
        raise ValueError(f"unknown split {split!r}; expected one of {list(SPLITS)}")
    return seed * 1000 + _SPLIT_OFFSETS[split]


def open_dataset(path: str, split: str) -> Any:
    """A ``datasets.Dataset`` from a ``load_from_disk`` directory or, failing that, the hub.

    A ``path`` that exists locally is read with ``datasets.load_from_disk``; a saved
    ``DatasetDict`` yields its ``split`` entry (or its only entry). A path that does not exist is
    taken as a hub dataset id and read with ``datasets.load_dataset(path, split=split)`` (never
    done by the tests or the embedded default).
    """
    import datasets  # lazy: importing caopd.tasks stays cheap

    if os.path.exists(path):
        loaded = datasets.load_from_disk(path)
        if isinstance(loaded, datasets.DatasetDict):
            if split in loaded:
                return loaded[split]
            if len(loaded) == 1:
                return next(iter(loaded.values()))
            raise TaskDataError(
                f"{path}: a DatasetDict without a {split!r} entry (has {sorted(loaded)})"
            )
        return loaded
    return datasets.load_dataset(path, split=split)


def _size(sizes: Mapping[str, Any], split: str) -> int | None:
    value = sizes.get(split)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise ValueError(
            f"task.sizes.{split} must be a non-negative integer or null, got {value!r}"
        )
    return value


def _subset(rows: list[TaskExample], n: int | None, rng: random.Random | None) -> list[TaskExample]:
    """At most ``n`` rows in source order: a random subset with ``rng``, else the first ``n``."""
    if n is None or n >= len(rows):
        return rows
    if rng is None:
        return rows[:n]
    keep = sorted(rng.sample(range(len(rows)), n))
    return [rows[i] for i in keep]


def assemble_splits(
    load_split: Callable[[str, str], list[TaskExample]],
    options: Mapping[str, Any],
    seed: int,
) -> dict[str, list[TaskExample]]:
    """``{"train", "val", "eval"}`` example lists following the rules of the module docstring.

    Args:
        load_split: ``(path, split) -> examples`` of the task.
        options: the ``task`` config subtree; reads ``paths`` and ``sizes``.
        seed: the run seed.
    """
    paths: Mapping[str, str | None] = options["paths"]
    sizes: Mapping[str, Any] = options["sizes"]
    loaded = {
        split: (load_split(paths[split], split) if paths.get(split) is not None else [])
        for split in SPLITS
    }

    train = loaded["train"]
    val = loaded["val"]
    n_val = _size(sizes, "val")
    if paths.get("val") is None and train and n_val:
        if n_val >= len(train):
            raise ValueError(
                f"task.sizes.val = {n_val} would carve all {len(train)} train rows into val; "
                "lower sizes.val or give paths.val"
            )
        order = list(range(len(train)))
        random.Random(split_seed(seed, "val")).shuffle(order)
        carved = set(order[:n_val])
        val = [row for i, row in enumerate(train) if i in carved]
        train = [row for i, row in enumerate(train) if i not in carved]

    return {
        "train": _subset(train, _size(sizes, "train"), random.Random(split_seed(seed, "train"))),
        "val": _subset(val, n_val, random.Random(split_seed(seed, "val"))),
        "eval": _subset(loaded["eval"], _size(sizes, "eval"), None),
    }
