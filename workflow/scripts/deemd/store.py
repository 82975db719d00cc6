"""The per-plate image store that every step after stitching reads instead of the PNGs.

One Zarr (v3) group per plate:
  images      uint8 (well, channel, y, x), the sites of a well tiled by the layout (any
              grid; a gap of the layout is zero), one Blosc-compressed chunk per field of
              the layout (a site's channels, or a gap);
  site_valid  bool (well, site): False where a site's image was dropped (on_bad_image: drop);
  attrs       wells, channel names, site size and layout, OME-NGFF-style axes, and (written
              by the stitch step) ``intensity``, how 16-bit images became uint8.

Why one 4-D array and not one OME-Zarr HCS image per well: zarr-python pays about 2-3 ms
of metadata and call overhead per array, which at demo size costs more than decoding the
PNGs (measured in benchmarks/stitch.py). Why a chunk per site and not per well: training
and inference read single sites, which then decode a quarter of the bytes (RxRx19a has
four sites a well); and the stitch step compresses and writes each site while its pixels
are still in the CPU's cache, where a whole 1024 px well (20 MB) is not, and writes files
of a few MB that cost the kernel less CPU to take into its page cache (benchmarks/scale.py).

Every chunk ends in a CRC-32C checksum (zarr's crc32c codec, after Blosc), and every read
checks that the chunks it touches exist (zarr would return the fill value for a missing
chunk) and match their checksum. PlateStore reads sites and wells by decoding their chunk
files itself (ChunkCodec.decode), as zarr would but without its cost per chunk; any zarr
reader reads the store. A damaged store is a StoreIntegrityError naming the store
and the well; the store is then marked for restitching (``{store}.damaged``, an input of
the stitch rule), so rerunning the same snakemake command restitches that plate.
"""

from __future__ import annotations

import functools
import itertools
import os
import time
from dataclasses import dataclass
from pathlib import Path

import google_crc32c
import numcodecs
import numpy as np
import zarr

from deemd.io import write_text_atomic


class StoreIntegrityError(OSError):
    """A chunk of a finished plate store is missing or fails its checksum."""


# zarr (3.1.6) keeps an array's write_empty_chunks on the handle create_array returns only,
# not in the stored array: a reopened handle skips a chunk equal to the fill value (an
# all-False site_valid, an all-dark site), and every verified read then finds it missing.
WRITE_EVERY_CHUNK = {"write_empty_chunks": True}


def writing_every_chunk(array: zarr.Array) -> zarr.Array:
    """``array`` (a handle of any origin) set to store every chunk it writes, the fill
    value's too, so that a missing chunk always means damage."""
    return array.with_config(WRITE_EVERY_CHUNK)


def damage_marker(path: str | Path) -> Path:
    """The file that marks a damaged store for restitching (an input of the stitch rule)."""
    return Path(str(path).rstrip("/") + ".damaged")


def mark_damaged(path: str | Path, reason: str) -> Path | None:
    """Write ``{path}.damaged`` (the reason and the time), atomically; None where the
    directory is not writable (the error message then says what to delete instead)."""
    marker = damage_marker(path)
    try:  # a temporary per process: two readers may find the damage at once
        write_text_atomic(marker, f"{time.strftime('%Y-%m-%dT%H:%M:%S')} {reason}\n", tmp=marker.with_name(marker.name + f".tmp{os.getpid()}"))
    except OSError:
        return None
    return marker


def integrity_error(path: str | Path, reason: str) -> StoreIntegrityError:
    """A StoreIntegrityError naming the store, after marking it for restitching."""
    marker = mark_damaged(path, reason)
    remedy = (
        f"it is marked for restitching ({marker}, an input of the stitch rule): rerun the same "
        "snakemake command and the plate's stitch job reruns"
        if marker is not None
        else f"delete {path} and rerun the same snakemake command, which restitches the plate"
    )
    return StoreIntegrityError(f"{path}: {reason}; the plate store is damaged, {remedy}")


class ChunkCodec:
    """Encodes and decodes one chunk of a zarr array exactly as zarr's own codec pipeline
    would (bytes, Blosc, CRC-32C), on the calling thread.

    Why not ``array[i] = chunk``: zarr hands every write to its one event-loop thread and
    then to a thread per codec, which on a 1024 px plate left the cores idle for a third
    of the stitch step (benchmarks/scale.py). Encoding and writing each site on the thread
    that decoded it keeps them busy. Only the codec chain create_plate_store makes is
    supported (``supports`` says whether an array has it); tests check that the bytes are
    those zarr writes. Reading (decode) skips zarr's cost per chunk (PlateStore._read_field)."""

    def __init__(self, array: zarr.Array):
        if not self.supports(array):
            raise ValueError(f"{array.path}: codecs {array.serializer}, {array.compressors}: only bytes, Blosc, CRC-32C")
        blosc = array.compressors[0]
        shuffle = {"noshuffle": numcodecs.Blosc.NOSHUFFLE, "shuffle": numcodecs.Blosc.SHUFFLE, "bitshuffle": numcodecs.Blosc.BITSHUFFLE}
        self._blosc = numcodecs.Blosc(
            cname=blosc.cname.value, clevel=blosc.clevel, shuffle=shuffle[blosc.shuffle.value], blocksize=blosc.blocksize,
            typesize=array.dtype.itemsize,
        )
        self._dtype = np.dtype(array.dtype).newbyteorder("<")  # zarr's bytes codec: little-endian
        self._shape = tuple(array.chunks)

    @staticmethod
    def supports(array: zarr.Array) -> bool:
        """Whether ``array``'s codecs are bytes, then Blosc, then CRC-32C, with no filter."""
        compressors = array.compressors
        return (
            not array.filters
            and isinstance(array.serializer, zarr.codecs.BytesCodec)
            and len(compressors) == 2
            and isinstance(compressors[0], zarr.codecs.BloscCodec)
            and isinstance(compressors[1], zarr.codecs.Crc32cCodec)
        )

    def decode(self, stored: bytes) -> np.ndarray:
        """One whole chunk from its stored bytes (encode's parts joined); a ValueError
        where they are too short or fail their checksum, which is checked before Blosc
        reads them (Blosc on a truncated chunk can crash)."""
        data = np.frombuffer(stored, dtype=np.uint8)
        if len(data) < 4:
            raise ValueError(f"{len(data)} bytes, too short for a chunk")
        if google_crc32c.value(data[:-4]) != int.from_bytes(stored[-4:], "little"):
            raise ValueError("stored and computed checksums differ")
        # Into an array of its own: writable, as zarr's reads are.
        return self._blosc.decode(data[:-4], out=np.empty(self._shape, dtype=self._dtype))

    def encode(self, chunk: np.ndarray) -> tuple[bytes, bytes]:
        """The stored bytes of one whole chunk, in two parts (joining them would copy the
        chunk once more): the Blosc frame, then its CRC-32C (4 bytes, little-endian)."""
        if chunk.shape != self._shape:
            raise ValueError(f"chunk of shape {chunk.shape}, the array's chunks are {self._shape}")
        compressed = self._blosc.encode(np.ascontiguousarray(chunk, dtype=self._dtype))
        return compressed, google_crc32c.value(compressed).to_bytes(4, "little")


class VerifiedArray:
    """A zarr array whose every read checks its chunks: a missing chunk (which zarr would
    read as the fill value) or a checksum mismatch is a StoreIntegrityError naming the
    store, the well and (for a chunk of one site) the site. Writes store every chunk
    they touch (writing_every_chunk); they and every other attribute (shape, dtype, ...)
    go to the array unchanged."""

    def __init__(self, array: zarr.Array, store_path: Path, group: zarr.Group):
        # The group's "wells" and "site_layout" attributes name what a chunk holds (only
        # needed for an error message).
        self._array, self._path, self._group = writing_every_chunk(array), Path(store_path), group
        self._chunk_shape = tuple(int(c) for c in array.chunks)

    def __getattr__(self, name):
        if name.startswith("_"):  # not set yet (unpickling): never recurse
            raise AttributeError(name)
        return getattr(self._array, name)

    def __len__(self) -> int:
        return len(self._array)

    def __setitem__(self, key, value) -> None:
        self._array[key] = value

    def _chunk_name(self, coords: tuple[int, ...]) -> str:
        return f"{self._array.path}/{self._array.metadata.encode_chunk_key(tuple(int(c) for c in coords))}"

    def _chunk_file(self, coords: tuple[int, ...]) -> Path:
        return self._path / self._chunk_name(coords)

    def _label(self, coords: tuple[int, ...]) -> str:
        """What the chunk at ``coords`` holds: its wells (first axis) and, where it is one
        field of a stitched well, that field's site."""
        rows = range(coords[0] * self._chunk_shape[0], min((coords[0] + 1) * self._chunk_shape[0], self._array.shape[0]))
        labels = list(self._group.attrs.get("wells", []))
        names = [labels[r] if r < len(labels) else f"index {r}" for r in rows]
        if len(names) != 1:
            shown = ", ".join(names) if len(names) <= 4 else f"{names[0]} to {names[-1]}"
            return f"{self._array.path} of wells {shown}"
        label = f"{self._array.path} of well {names[0]}"
        layout = self._group.attrs.get("site_layout")
        if self._array.ndim == 4 and layout and self._chunk_shape[2:] == (self._group.attrs.get("site_size"),) * 2:
            site = int(layout[coords[2]][coords[3]])
            label += f", site {site}" if site else ", a gap of the layout"
        return label

    def _chunk_error(self, coords: tuple[int, ...], what: str) -> StoreIntegrityError:
        """The StoreIntegrityError for the chunk at ``coords`` (``what``: "is missing", "is
        corrupt (...)"), naming the chunk and what it holds; marks the store damaged."""
        return integrity_error(self._path, f"chunk {self._chunk_name(coords)} ({self._label(coords)}) {what}")

    def _chunks(self, key) -> list[tuple[int, ...]]:
        """The chunk coordinates that ``key`` (ints, slices, an Ellipsis) touches."""
        key = key if isinstance(key, tuple) else (key,)
        if any(k is Ellipsis for k in key):
            at = next(i for i, k in enumerate(key) if k is Ellipsis)
            key = key[:at] + (slice(None),) * (self._array.ndim - len(key) + 1) + key[at + 1 :]
        key = key + (slice(None),) * (self._array.ndim - len(key))
        per_axis = [
            np.unique(np.atleast_1d(np.arange(size)[k]) // chunk) for k, size, chunk in zip(key, self._array.shape, self._chunk_shape)
        ]
        return list(itertools.product(*(axis.tolist() for axis in per_axis)))

    def __getitem__(self, key):
        chunks = self._chunks(key)
        # One stat per chunk read: microseconds against milliseconds of decoding a site.
        for chunk in chunks:
            if not self._chunk_file(chunk).is_file():
                raise self._chunk_error(chunk, "is missing")
        try:
            return self._array[key]
        except (ValueError, RuntimeError, OSError) as error:
            # Which chunk: read each alone (only on this failure path).
            for chunk in chunks:
                try:
                    self._array[tuple(slice(c * n, (c + 1) * n) for c, n in zip(chunk, self._chunk_shape))]
                except (ValueError, RuntimeError, OSError) as chunk_error:
                    raise self._chunk_error(chunk, f"is corrupt ({chunk_error})") from error
            raise


@dataclass(frozen=True)
class PlateStore:
    """An open per-plate store; its reads are verified (VerifiedArray)."""

    group: zarr.Group
    path: Path

    @functools.cached_property
    def images(self) -> VerifiedArray:
        # Opened once: zarr reads the array's metadata on every group["images"] (~1 ms).
        return VerifiedArray(self.group["images"], self.path, self.group)

    @property
    def site_valid(self) -> np.ndarray:
        return VerifiedArray(self.group["site_valid"], self.path, self.group)[:]

    def write_site_valid(self, valid: np.ndarray) -> None:
        """Write the whole (well, site) ``site_valid``, its chunk stored even where every
        site was dropped (all False, the fill value: writing_every_chunk)."""
        VerifiedArray(self.group["site_valid"], self.path, self.group)[:] = valid

    @property
    def wells(self) -> list[str]:
        return list(self.group.attrs["wells"])

    @property
    def channel_names(self) -> list[str]:
        return list(self.group.attrs["channel_names"])

    @property
    def site_size(self) -> int:
        return int(self.group.attrs["site_size"])

    @property
    def site_layout(self) -> list[list[int]]:
        return [list(row) for row in self.group.attrs["site_layout"]]

    @functools.cached_property
    def site_placement(self) -> dict[int, tuple[slice, slice]]:
        """site -> (y slice, x slice) in a stitched well image (site_slices)."""
        return site_slices(self.site_layout, self.site_size)

    @functools.cached_property
    def _fields(self) -> dict[int, tuple[int, int]]:
        return site_fields(self.site_layout)

    def _read_field(self, well_index: int, row: int, column: int) -> np.ndarray:
        """One field's chunk (channel, S, S), read and checked here (ChunkCodec.decode):
        zarr's own read path costs about 0.3 ms a chunk, more than decoding a small site.
        A missing or damaged chunk is a StoreIntegrityError as VerifiedArray raises it."""
        coords = (int(well_index), 0, int(row), int(column))
        try:
            stored = self.images._chunk_file(coords).read_bytes()
        except FileNotFoundError:
            raise self.images._chunk_error(coords, "is missing") from None
        try:
            return self._codec.decode(stored)[0]
        except (ValueError, RuntimeError) as error:
            raise self.images._chunk_error(coords, f"is corrupt ({error})") from error

    def read_site(self, well_index: int, site: int) -> np.ndarray:
        """One site (channel, S, S) of the well in row ``well_index``, verified; only
        that site's chunk is read."""
        if self._codec is not None and 0 <= int(well_index) < self.images.shape[0]:
            return self._read_field(well_index, *self._fields[int(site)])
        ys, xs = self.site_placement[int(site)]
        return self.images[int(well_index), :, ys, xs]

    @functools.cached_property
    def _codec(self) -> ChunkCodec | None:
        array = self.group["images"]
        site_chunks = tuple(array.chunks) == (1, array.shape[1], self.site_size, self.site_size)
        return ChunkCodec(array) if ChunkCodec.supports(array) and site_chunks else None

    def write_field(self, well_index: int, row: int, column: int, pixels: np.ndarray) -> None:
        """Write one field of the layout (row, column) of a well: a site's (channel, S, S)
        pixels, or zeros for a gap. The chunk is encoded on the calling thread
        (ChunkCodec) and written as one file; the store is being written under a
        temporary name (atomic_directory), so a chunk file needs no atomic rename of its
        own."""
        size = self.site_size
        if self._codec is None:  # a store of other chunks: through zarr
            self.images[int(well_index), :, row * size : (row + 1) * size, column * size : (column + 1) * size] = pixels
            return
        compressed, checksum = self._codec.encode(pixels[None])
        with open(self.images._chunk_file((int(well_index), 0, int(row), int(column))), "wb") as handle:
            handle.write(compressed)
            handle.write(checksum)

    def read_well(self, well_index: int, channel: int | None = None) -> np.ndarray:
        """One well (channel, y, x), or (y, x) for one channel index (read_wells)."""
        return self.read_wells(well_index, well_index + 1, channel)[0]

    def read_wells(self, start: int = 0, stop: int | None = None, channel: int | None = None) -> np.ndarray:
        """Wells [start, stop) as (well, channel, y, x), or (well, y, x) for one channel index."""
        if self._codec is None:
            return self.images[start:stop] if channel is None else self.images[start:stop, channel]
        rows = range(self.images.shape[0])[start:stop]
        channels = slice(None) if channel is None else int(channel)
        out = np.empty((len(rows),) + self.images.shape[1:], dtype=self.images.dtype)[:, channels]
        size, fields = self.site_size, layout_fields(self.site_layout)
        for i, well_index in enumerate(rows):
            for _, r, c in fields:
                out[i, ..., r * size : (r + 1) * size, c * size : (c + 1) * size] = self._read_field(well_index, r, c)[channels]
        return out


def create_plate_store(
    path: str | Path,
    wells: list[str],
    channel_names: list[str],
    site_size: int,
    site_layout: list[list[int]],
    codec: str = "lz4",
    clevel: int = 5,
    attrs: dict | None = None,
    dtype: str = "uint8",
    shuffle: str = "bitshuffle",
) -> PlateStore:
    """Create an empty store for ``len(wells)`` stitched wells, each the grid of
    ``site_layout`` (rows of site numbers, 0 for a gap) of ``site_size`` px sites, Blosc
    ``codec`` at ``clevel`` after ``shuffle`` (bitshuffle, shuffle or noshuffle).
    ``dtype`` is uint8 in the workflow (benchmarks/stitch.py measures uint16)."""
    rows, cols = len(site_layout), len(site_layout[0])
    n_sites = len(layout_sites(site_layout))
    shape = (len(wells), len(channel_names), rows * site_size, cols * site_size)
    group = zarr.open_group(str(path), mode="w")
    # The checksum comes after Blosc: it covers the stored bytes, so a truncated or
    # altered chunk fails before Blosc decodes it (Blosc on a truncated chunk can crash).
    compressors = [zarr.codecs.BloscCodec(cname=codec, clevel=clevel, shuffle=shuffle), zarr.codecs.Crc32cCodec()]
    # One chunk per field of the layout (a site's channels, or a gap: see the module's
    # docstring). Flat chunk keys (no directory per chunk) and no all-fill-value test per
    # chunk: both cost more CPU than compressing a small site (benchmarks/stitch.py).
    # Every chunk is written, so a missing one means damage (a reopened handle must be set
    # so again: writing_every_chunk).
    group.create_array(
        "images",
        shape=shape,
        chunks=(1, len(channel_names), site_size, site_size),
        dtype=dtype,
        compressors=compressors,
        fill_value=0,
        chunk_key_encoding={"name": "default", "separator": "."},
        config={"write_empty_chunks": True},
    )
    group.create_array(
        "site_valid", shape=(len(wells), n_sites), chunks=(max(len(wells), 1), n_sites), dtype="bool",
        fill_value=False, compressors=[zarr.codecs.ZstdCodec(), zarr.codecs.Crc32cCodec()],
        config={"write_empty_chunks": True},
    )
    group.attrs.update(
        {
            "wells": list(wells),
            "channel_names": list(channel_names),
            "site_size": int(site_size),
            "site_layout": [list(map(int, row)) for row in site_layout],
            "axes": [
                {"name": "well", "type": "other"},
                {"name": "c", "type": "channel"},
                {"name": "y", "type": "space", "unit": "pixel"},
                {"name": "x", "type": "space", "unit": "pixel"},
            ],
            **(attrs or {}),
        }
    )
    return PlateStore(group, Path(path))


def has_checksums(array: zarr.Array) -> bool:
    """Whether every chunk of ``array`` carries a CRC-32C checksum."""
    return any(isinstance(codec, zarr.codecs.Crc32cCodec) for codec in array.compressors)


def open_plate_store(path: str | Path) -> PlateStore:
    """Open a store for reading; a missing or unfinished store is an error naming it, and
    so is one without checksums (written before they were added: it is marked for
    restitching, as a damaged one is)."""
    path = Path(path)
    try:
        group = zarr.open_group(str(path), mode="r")
        group["images"], group["site_valid"]
    except (FileNotFoundError, KeyError, zarr.errors.GroupNotFoundError) as error:
        raise FileNotFoundError(f"{path}: not a deemd plate store ({error})") from error
    if not group.attrs.get("complete", False):
        raise ValueError(f"{path}: plate store was not finished (no 'complete' attribute); rerun the stitch job")
    for name in ("images", "site_valid"):
        if not has_checksums(group[name]):
            raise integrity_error(path, f"array {name!r} has no checksums (written by an older version)")
    return PlateStore(group, path)


def store_paths_by_plate(paths) -> dict[str, str]:
    """{plate_id: path} of per-plate stores, each named ``{plate_id}.zarr`` (the stitch
    rule's output), so rules pass the stores alone rather than beside a list of plates."""
    by_plate = {}
    for path in map(str, paths):
        name = Path(path.rstrip("/")).name
        if not name.endswith(".zarr"):
            raise ValueError(f"{path}: a plate store is named {{plate_id}}.zarr")
        by_plate[name.removesuffix(".zarr")] = path
    if len(by_plate) != len(list(paths)):
        raise ValueError(f"two stores of the same plate among {list(paths)}")
    return by_plate


def layout_fields(site_layout: list[list[int]]) -> list[tuple[int, int, int]]:
    """(site number, row, column) of every field of the layout, row by row; site 0 is a gap
    (a field that was not imaged)."""
    return [(int(site), r, c) for r, row in enumerate(site_layout) for c, site in enumerate(row)]


def site_fields(site_layout: list[list[int]]) -> dict[int, tuple[int, int]]:
    """site -> (row, column) of its field in the layout, in site order (gaps left out)."""
    return {site: (r, c) for site, r, c in sorted(layout_fields(site_layout)) if site}


def site_slices(site_layout: list[list[int]], site_size: int) -> dict[int, tuple[slice, slice]]:
    """Where each site lies in the stitched well image: site -> (y slice, x slice), in
    site order; a 0 in the layout is a field that was not imaged (a gap, left zero)."""
    return {
        site: (slice(r * site_size, (r + 1) * site_size), slice(c * site_size, (c + 1) * site_size))
        for site, (r, c) in site_fields(site_layout).items()
    }


def layout_sites(site_layout: list[list[int]]) -> list[int]:
    """The site numbers of a layout (rows of site numbers, 0 for a gap), ascending."""
    return sorted(int(site) for row in site_layout for site in row if int(site))
