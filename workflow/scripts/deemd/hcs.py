"""Export of a per-plate store as an OME-NGFF HCS plate that napari, Fiji and OMERO open.

Layout (NGFF 0.4, zarr v2; README "Outputs" says why 0.4)::

    {plate_id}.ome.zarr/            plate metadata: rows, columns, wells, field_count
      {row}/{column}/               one well (e.g. B/3 for B03), its fields listed
        {field}/                    one field per imaged site (0, 1, ... in site order)
          0/ 1/ ...                 the pyramid: (c, y, x) uint8, each level half the last

Every field carries the stains' names and colours (``omero`` channels) and, under
``deemd``, the store's well and site it came from. A site dropped at stitching
(``site_valid`` False) is not exported, so a well lists only its imaged fields.
The pixels are read with PlateStore.read_site, the store's one way to read a site. The first
field is written through zarr, the others as copies of its files (FieldCopier: zarr's
per-call cost is most of what a small field costs).
"""

from __future__ import annotations

import json
from pathlib import Path

import numcodecs
import numpy as np
import zarr
from ome_zarr.axes import Axes
from ome_zarr.format import FormatV04
from ome_zarr.writer import write_plate_metadata, write_well_metadata
from skimage.transform import downscale_local_mean

from deemd.figures import plate_shape, row_label, well_position
from deemd.stains import channel_color
from deemd.store import PlateStore

NGFF_FORMAT = FormatV04
# What ome-zarr-py's write_image gives a zarr v2 field (zstd), kept so the files are as before.
FIELD_COMPRESSOR = numcodecs.Zstd(level=0)

def display_windows(sample: np.ndarray, low: float = 0.1, high: float = 99.9) -> list[tuple[float, float]]:
    """Per channel (start, end) contrast limits: the ``low`` and ``high`` percentiles of
    ``sample`` (channel, ...), end at least start + 1."""
    sample = np.asarray(sample)
    windows = []
    for channel in sample.reshape(sample.shape[0], -1):
        start, end = (float(v) for v in np.percentile(channel, [low, high])) if channel.size else (0.0, 255.0)
        windows.append((round(start, 1), round(max(end, start + 1.0), 1)))
    return windows


def omero_metadata(channel_names: list[str], windows: list[tuple[float, float]], dtype_max: int = 255) -> dict:
    """The NGFF ``omero`` block: each channel's label, colour and contrast window."""
    if len(windows) != len(channel_names):
        raise ValueError(f"{len(windows)} contrast windows for {len(channel_names)} channels")
    channels = [
        {
            "label": str(name),
            "color": channel_color(name, index),
            "active": True,
            "window": {"min": 0, "max": dtype_max, "start": start, "end": end},
        }
        for index, (name, (start, end)) in enumerate(zip(channel_names, windows))
    ]
    return {"channels": channels, "rdefs": {"model": "color"}}


def pyramid_factors(size: int, min_size: int) -> list[int]:
    """Downsampling factors 2, 4, 8, ... of a ``size`` px field whose smallest level is at
    least ``min_size`` px (none where the field itself is that small)."""
    if size < 1 or min_size < 1:
        raise ValueError(f"field size {size} and smallest pyramid level {min_size} must be positive")
    factors = []
    factor = 2
    while size // factor >= min_size:
        factors.append(factor)
        factor *= 2
    return factors


def plate_layout(wells: list[str]) -> tuple[list[str], list[str], list[str]]:
    """(row names, column names, well paths) of a plate holding ``wells`` (e.g. B03): the
    rows and columns of the smallest standard plate that holds them (A..P, 1..24 for a
    384-well plate), and one ``row/column`` path per well, in the order given."""
    rows, columns = well_position(wells)
    n_rows, n_columns = plate_shape(rows, columns)
    row_names = [row_label(r) for r in range(n_rows)]
    column_names = [str(c + 1) for c in range(n_columns)]
    paths = [f"{row_names[r]}/{column_names[c]}" for r, c in zip(rows, columns)]
    if len(set(paths)) != len(paths):
        raise ValueError(f"two wells of {list(wells)} fall on one plate position")
    return row_names, column_names, paths


def imaged_sites(store: PlateStore) -> list[list[int]]:
    """Per well of the store (in its order), the sites that were imaged (site_valid), in
    site order."""
    sites = sorted(store.site_placement)
    valid = store.site_valid
    return [[site for position, site in enumerate(sites) if valid[well, position]] for well in range(len(store.wells))]


def halve_by_local_mean(pixels: np.ndarray) -> np.ndarray:
    """(channel, y, x) ``pixels`` halved in y and x: each output pixel the mean of a 2 x 2
    block in the input dtype, as skimage's ``downscale_local_mean`` then a cast gives it
    (an odd edge padded with zeros; the cast truncates). Unsigned integers of up to 16 bits
    (the store's uint8) are summed exactly in a wider integer and floored, which is the
    same value 10x faster than skimage's float64 mean; other dtypes go through skimage."""
    pixels = np.asarray(pixels)
    if pixels.dtype.kind != "u" or pixels.dtype.itemsize > 2:
        return downscale_local_mean(pixels, (1, 2, 2)).astype(pixels.dtype)
    _, height, width = pixels.shape
    if height % 2 or width % 2:
        pixels = np.pad(pixels, ((0, 0), (0, height % 2), (0, width % 2)))
    total = pixels[:, 0::2, 0::2].astype(np.uint16 if pixels.dtype.itemsize == 1 else np.uint32)
    total += pixels[:, 1::2, 0::2]
    total += pixels[:, 0::2, 1::2]
    total += pixels[:, 1::2, 1::2]
    return (total >> 2).astype(pixels.dtype)


def local_mean_pyramid(pixels: np.ndarray, levels: int) -> list[np.ndarray]:
    """``pixels`` (channel, y, x) and ``levels`` halvings of it, each the 2 x 2 local mean
    of the one before in the input dtype (as ome-zarr-py's LOCAL_MEAN method builds them)."""
    pyramid = [np.asarray(pixels)]
    for _ in range(levels):
        pyramid.append(halve_by_local_mean(pyramid[-1]))
    return pyramid


def multiscales_block(shapes: list[tuple[int, ...]], name: str, fmt=None) -> list[dict]:
    """The NGFF ``multiscales`` attribute of a (c, y, x) pyramid with these level shapes
    (levels ``s0``, ``s1``, ...): axes and each level's scale and translation, made and
    validated by ome-zarr-py's format."""
    fmt = fmt or NGFF_FORMAT()
    transforms = fmt.generate_coordinate_transformations(shapes)
    fmt.validate_coordinate_transformations(len(shapes[0]), len(shapes), transforms)
    datasets = [{"path": f"s{level}", "coordinateTransformations": t} for level, t in enumerate(transforms)]
    return [{"axes": Axes(list("cyx"), fmt=fmt).to_list(fmt), "datasets": datasets, "name": name, "version": fmt.version}]


def field_attributes(pyramid: list[np.ndarray], omero: dict, origin: dict) -> dict:
    """A field's group attributes: its NGFF multiscales, the ``omero`` channels and, under
    ``deemd``, ``origin`` (the store's well and site)."""
    return {
        "multiscales": multiscales_block([level.shape for level in pyramid], f"{origin['well']} site {origin['site']}"),
        "omero": omero,
        "deemd": origin,
    }


def write_field(group: zarr.Group, name: str, pixels: np.ndarray, levels: int, omero: dict, origin: dict) -> None:
    """One field (channel, y, x) as the multiscale image ``name`` under ``group``: a pyramid
    of ``levels`` local-mean halvings, one chunk per level; ``origin`` (the store's well and
    site) goes to its attributes under ``deemd``.

    The group and its attributes are written in one step and each level in one more:
    zarr's per-operation cost, not the bytes, is what a field of a few 100 kB costs."""
    pyramid = local_mean_pyramid(pixels, levels)
    field = group.create_group(name, attributes=field_attributes(pyramid, omero, origin))
    for level, data in enumerate(pyramid):
        field.create_array(f"s{level}", data=data, chunks=data.shape, compressors=FIELD_COMPRESSOR)


class FieldCopier:
    """Writes fields shaped like a template field that zarr wrote: the same group and
    array metadata files (``.zgroup``, each level's ``.zarray`` and ``.zattrs``), the
    field's own ``.zattrs``, and each level's one chunk encoded with the level's own
    compressor under the chunk key zarr used.

    Why: zarr's per-call cost (about 4.5 ms a group or array, its event loop and metadata
    work) is most of what a small field costs to write; the files are the same."""

    def __init__(self, template: Path):
        self.template = Path(template)
        self.group_files = {".zgroup": (self.template / ".zgroup").read_bytes()}
        self.levels = []
        for level in sorted(p for p in self.template.iterdir() if p.is_dir()):
            array = zarr.open_array(str(level), mode="r")
            if array.nchunks != 1 or array.metadata.filters:
                raise ValueError(f"{level}: a template level must be one chunk without filters")
            files = {name: (level / name).read_bytes() for name in (".zarray", ".zattrs") if (level / name).exists()}
            chunk_key = array.metadata.encode_chunk_key((0,) * array.ndim)
            self.levels.append((level.name, array.shape, np.dtype(array.dtype), array.metadata.compressor, files, chunk_key))

    def write(self, path: Path, pyramid: list[np.ndarray], attributes: dict) -> None:
        """The field ``pyramid`` (its levels' shapes and dtype those of the template) with
        ``attributes`` as the group's .zattrs, at ``path``."""
        path.mkdir(parents=True)
        for name, content in self.group_files.items():
            (path / name).write_bytes(content)
        (path / ".zattrs").write_text(json.dumps(attributes, indent=2))
        for (name, shape, dtype, compressor, files, chunk_key), data in zip(self.levels, pyramid, strict=True):
            if data.shape != shape or data.dtype != dtype:
                raise ValueError(f"level {name}: {data.shape} {data.dtype}, the template's is {shape} {dtype}")
            level = path / name
            level.mkdir()
            for file, content in files.items():
                (level / file).write_bytes(content)
            chunk = level / chunk_key
            chunk.parent.mkdir(parents=True, exist_ok=True)
            raw = np.ascontiguousarray(data)
            chunk.write_bytes(compressor.encode(raw) if compressor is not None else raw.tobytes())


def write_hcs_plate(store: PlateStore, path: str | Path, plate_id: str, min_level_size: int = 64, sample_wells: int = 4) -> dict:
    """Write ``store`` as an NGFF 0.4 HCS plate at ``path`` (which must not hold one yet;
    see deemd.io.atomic_directory). Contrast windows come from the first ``sample_wells``
    wells. Returns what was written: wells, fields, the field shape and pyramid levels."""
    wells = store.wells
    row_names, column_names, well_paths = plate_layout(wells)
    sites = imaged_sites(store)
    factors = pyramid_factors(store.site_size, min_level_size)
    sample = store.read_wells(0, min(sample_wells, len(wells))) if wells else np.zeros((len(store.channel_names), 0))
    omero = omero_metadata(store.channel_names, display_windows(np.moveaxis(np.asarray(sample), 1, 0)))
    fmt = NGFF_FORMAT()
    root = zarr.open_group(str(path), mode="w-", zarr_format=fmt.zarr_format)
    write_plate_metadata(root, row_names, column_names, well_paths, fmt=fmt,
                         field_count=max((len(s) for s in sites), default=0), name=plate_id)
    n_fields = _write_wells(root, Path(path), store, wells, well_paths, sites, factors, omero, fmt)
    root.attrs["deemd"] = {"plate_id": plate_id, "source_store": Path(store.path).name}
    size = store.site_size
    return {"wells": len(wells), "fields": n_fields, "field_shape": [len(store.channel_names), size, size],
            "levels": [size // f for f in [1, *factors]]}


def _write_wells(root, root_path: Path, store, wells, well_paths, sites, factors, omero, fmt) -> int:
    """Write every well's metadata and fields under ``root`` (at ``root_path``): the first
    field through zarr, the others by a FieldCopier of it. Returns the fields written."""
    n_fields = 0
    copier = None
    for index, (well, well_path, well_sites) in enumerate(zip(wells, well_paths, sites)):
        row, column = well_path.split("/")
        well_group = root.require_group(row).require_group(column)
        write_well_metadata(well_group, [{"path": str(f)} for f in range(len(well_sites))], fmt=fmt)
        for field, site in enumerate(well_sites):
            pixels, origin = np.asarray(store.read_site(index, site)), {"well": well, "site": int(site)}
            if copier is None:
                write_field(well_group, str(field), pixels, len(factors), omero, origin)
                copier = FieldCopier(root_path / row / column / str(field))
            else:
                pyramid = local_mean_pyramid(pixels, len(factors))
                copier.write(root_path / row / column / str(field), pyramid, field_attributes(pyramid, omero, origin))
            n_fields += 1
    return n_fields


def tree_size(path: str | Path) -> tuple[int, int]:
    """(files, bytes) under ``path``."""
    files = [p for p in Path(path).rglob("*") if p.is_file()]
    return len(files), sum(p.stat().st_size for p in files)
