"""Reading site PNGs and tiling the sites of a well into one image."""

from __future__ import annotations

import zlib

import numpy as np
from PIL import Image, UnidentifiedImageError

from deemd.store import site_slices


class ImageReadError(OSError):
    """A site image is missing, corrupt, or not the expected 8-bit size."""


def image_path(pattern: str, experiment: str, plate: int, well: str, site: int, channel: int) -> str:
    """Fill the dataset's image path pattern (str.format fields, format specs allowed)."""
    return pattern.format(experiment=experiment, plate=int(plate), well=well, site=int(site), channel=int(channel))


def read_png(path: str, site_size: int) -> np.ndarray:
    """Decode one 8-bit single-channel PNG of ``site_size`` x ``site_size``.

    Every failure is an ImageReadError naming the file: missing, truncated or corrupt,
    wrong mode (not 8-bit grey) or wrong size. Never returns zeros in place of an image.
    """
    try:
        with Image.open(path) as image:
            image.load()
            if image.mode != "L":
                raise ImageReadError(f"{path}: mode {image.mode!r}, expected 8-bit greyscale ('L')")
            array = np.asarray(image)
    except FileNotFoundError as error:
        raise ImageReadError(f"{path}: file not found") from error
    except (UnidentifiedImageError, OSError, SyntaxError, zlib.error, ValueError) as error:
        if isinstance(error, ImageReadError):
            raise
        raise ImageReadError(f"{path}: corrupt or truncated PNG ({error})") from error
    if array.shape != (site_size, site_size):
        raise ImageReadError(f"{path}: size {array.shape[1]}x{array.shape[0]}, expected {site_size}x{site_size} (dataset.site_size)")
    return array


def read_site(paths: list[str], site_size: int) -> np.ndarray:
    """All channels of one site as (channel, y, x) uint8."""
    return np.stack([read_png(path, site_size) for path in paths])


def stitch_sites(
    sites: dict[int, np.ndarray], site_layout: list[list[int]], site_size: int, n_channels: int
) -> tuple[np.ndarray, np.ndarray]:
    """Tile the sites of a well (site -> (channel, y, x)) into one (channel, Y, X) image.

    Returns the image and a bool vector over sites 1..n (True = present). An absent site
    stays zero in the image and False in the vector, so no later step mistakes it for a
    dark field.
    """
    placement = site_slices(site_layout, site_size)
    rows, cols = len(site_layout), len(site_layout[0])
    well = np.zeros((n_channels, rows * site_size, cols * site_size), dtype=np.uint8)
    valid = np.zeros(rows * cols, dtype=bool)
    for site, pixels in sites.items():
        ys, xs = placement[int(site)]
        well[:, ys, xs] = pixels
        valid[int(site) - 1] = True
    return well, valid


def read_well_sites(
    well_sites, pattern: str, channels: list[int], site_size: int, on_bad_image: str
) -> tuple[dict[int, np.ndarray], list[dict]]:
    """Read every site of one well (rows of the sites table).

    With ``on_bad_image == "drop"`` a site with an unreadable channel is left out and
    reported (one QC record per dropped site); with ``"error"`` the ImageReadError stops
    the job.
    """
    sites, dropped = {}, []
    for row in well_sites.itertuples(index=False):
        paths = [image_path(pattern, row.experiment, row.plate, row.well, row.site, ch) for ch in channels]
        try:
            sites[int(row.site)] = read_site(paths, site_size)
        except ImageReadError as error:
            if on_bad_image != "drop":
                raise
            dropped.append({"site_id": row.site_id, "well": row.well, "site": int(row.site), "reason": str(error)})
    return sites, dropped


def stitch_plate(
    plate_sites,
    store,
    pattern: str,
    channels: list[int],
    on_bad_image: str,
    batch_wells: int,
    pool,
    progress=None,
) -> list[dict]:
    """Decode, stitch and write every well of one plate into an open PlateStore.

    Wells are decoded in parallel on ``pool`` (PNG decoding releases the GIL) and written a
    batch at a time, so zarr compresses a batch of chunks per call. Returns the QC records
    of dropped sites.
    """
    wells = store.wells
    by_well = dict(tuple(plate_sites.groupby("well", sort=False)))
    site_size, layout = store.site_size, store.site_layout
    n_channels = len(channels)
    dropped: list[dict] = []

    def load(well: str):
        sites, bad = read_well_sites(by_well[well], pattern, channels, site_size, on_bad_image)
        image, valid = stitch_sites(sites, layout, site_size, n_channels)
        return image, valid, bad

    valid_all = np.zeros((len(wells), len(layout) * len(layout[0])), dtype=bool)
    for start in range(0, len(wells), batch_wells):
        stop = min(start + batch_wells, len(wells))
        results = list(pool.map(load, wells[start:stop]))
        store.images[start:stop] = np.stack([r[0] for r in results])
        for offset, (_, valid, bad) in enumerate(results):
            valid_all[start + offset] = valid
            dropped.extend(bad)
        if progress is not None:
            progress(stop, len(wells))
    store.group["site_valid"][:] = valid_all
    return dropped
