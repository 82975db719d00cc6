"""Sites read from the per-plate stores, for training and inference."""

from __future__ import annotations

import numpy as np
import pandas as pd
import torch
from torch.utils.data import DataLoader, Dataset

from deemd.store import open_plate_store


class SiteDataset(Dataset):
    """One item per site: (uint8 tensor (C, S, S), label, row index).

    ``sites`` needs plate_id, well_index, site (and label, -1 where unknown). Stores are
    opened lazily in each DataLoader worker (zarr handles are not shared across forks);
    a site is one chunk of its plate's store (PlateStore.read_site).
    """

    def __init__(self, sites: pd.DataFrame, store_paths: dict[str, str]):
        self.plate = sites["plate_id"].to_numpy()
        self.well_index = sites["well_index"].to_numpy(dtype=np.int64)
        self.site = sites["site"].to_numpy(dtype=np.int64)
        labels = sites["label"] if "label" in sites else pd.Series(-1, index=sites.index)
        self.label = labels.astype("Float64").fillna(-1).to_numpy(dtype=np.float32)
        self.store_paths = dict(store_paths)
        self._stores: dict = {}

    def __getstate__(self):
        # Open zarr handles stay behind: each worker opens its own.
        return {**self.__dict__, "_stores": {}}

    def __len__(self) -> int:
        return len(self.plate)

    def _store(self, plate_id: str):
        if plate_id not in self._stores:
            self._stores[plate_id] = open_plate_store(self.store_paths[plate_id])
        return self._stores[plate_id]

    def __getitem__(self, index: int):
        store = self._store(self.plate[index])
        pixels = store.read_site(self.well_index[index], self.site[index])
        return torch.from_numpy(np.ascontiguousarray(pixels)), torch.tensor(self.label[index]), index


def site_loader(dataset: SiteDataset, batch_size: int, workers: int, shuffle_seed: int | None = None, pin_memory: bool = False) -> DataLoader:
    """Batches of sites; shuffled by a generator seeded with ``shuffle_seed`` (None: in
    order), so an epoch's order is fixed by its seed and a resumed run repeats it."""
    generator = None
    if shuffle_seed is not None:
        generator = torch.Generator().manual_seed(int(shuffle_seed))
    return DataLoader(
        dataset,
        batch_size=batch_size,
        shuffle=shuffle_seed is not None,
        generator=generator,
        num_workers=workers,
        pin_memory=pin_memory,
        # zarr runs an asyncio loop in a thread, which a forked child would inherit dead.
        multiprocessing_context="forkserver" if workers > 0 else None,
    )
