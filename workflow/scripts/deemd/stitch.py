"""Reading site images (PNG or TIFF, 8- or 16-bit) and tiling the sites of a well into
one 8-bit image."""

from __future__ import annotations

import functools
import hashlib
import os
import threading
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import imagecodecs
import numpy as np
import tifffile

from deemd.figures import row_label, well_position
from deemd.nuclei import estimate_wells
from deemd.store import layout_fields, layout_sites, site_fields

# The pixel types a site image may have; anything else is an error naming the file.
IMAGE_DTYPES = (np.dtype(np.uint8), np.dtype(np.uint16))
TIFF_SUFFIXES = (".tif", ".tiff")


class ImageReadError(OSError):
    """A site image is missing, corrupt, or not of the expected size, pixel type or
    number of channels."""


@functools.lru_cache(maxsize=4096)
def well_fields(well: str) -> dict:
    """The path-pattern fields of a well name like "B03" or "AF48" (1536-well plates):
    ``row`` and ``column`` (1-based numbers: row A is 1) and ``row_letter`` ("B"); a
    name of another form is a ValueError naming it (deemd.figures.well_position)."""
    rows, columns = well_position([well])
    return {"row": int(rows[0]) + 1, "column": int(columns[0]) + 1, "row_letter": row_label(int(rows[0]))}


def image_path(pattern: str, experiment: str, plate, well: str, site: int, channel: int) -> str:
    """Fill the dataset's image path pattern (str.format fields, format specs allowed):
    experiment, plate (an integer, or a barcode string), well ("B03"), row and column
    (numbers, e.g. ``r{row:02d}c{column:02d}``), row_letter ("B"), site and channel."""
    plate = plate if isinstance(plate, str) else int(plate)
    return pattern.format(
        experiment=experiment, plate=plate, well=well, site=int(site), channel=int(channel), **well_fields(well)
    )


# PNG samples a pixel -> the colour mode they mean (PIL's names, which users know).
PNG_COLOUR_MODES = {2: "LA", 3: "RGB", 4: "RGBA"}
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
PNG_GREY_DEPTHS = {8: np.dtype(np.uint8), 16: np.dtype(np.uint16)}
# A PNG's IHDR colour type -> PIL's mode and what it is, for the error message.
PNG_COLOUR_TYPES = {2: ("RGB", "colour"), 3: ("P", "palette colour"), 4: ("LA", "greyscale with alpha"), 6: ("RGBA", "colour with alpha")}
GREYSCALE_EXPECTED = "expected 8-bit ('L') or 16-bit ('I;16') greyscale"


def png_header(head: bytes) -> tuple[int, int] | None:
    """(bit depth, colour type) from a PNG's first 33 bytes (signature and IHDR); None
    where they are not a PNG's (the decoder then names the fault)."""
    if len(head) < 33 or head[:8] != PNG_SIGNATURE or head[12:16] != b"IHDR":
        return None
    return head[24], head[25]


def png_format_error(path: str, bit_depth: int, colour_type: int) -> str | None:
    """Why a PNG of this bit depth and colour type is not a site image (only 8- or 16-bit
    greyscale is), naming ``path``; None where it is one. Checked before decoding:
    libpng widens a 1-bit image to 0/255 uint8 and a palette one to RGB, which would hide
    what the file is."""
    if colour_type == 0:
        if bit_depth in PNG_GREY_DEPTHS:
            return None
        mode = " (mode '1', black and white)" if bit_depth == 1 else ""
        return f"{path}: {bit_depth}-bit greyscale{mode}, {GREYSCALE_EXPECTED}"
    mode, what = PNG_COLOUR_TYPES.get(colour_type, (f"colour type {colour_type}", "not greyscale"))
    return f"{path}: mode {mode!r} ({what}), {GREYSCALE_EXPECTED}"


def read_image(path: str, out: np.ndarray | None = None) -> np.ndarray:
    """Decode one image file as stored: a PNG through imagecodecs (libpng; 8- or 16-bit
    greyscale, its header checked first: png_format_error), a .tif/.tiff through tifffile
    (its first series: (y, x), or (pages, y, x) for a multi-page or multi-channel file).
    Every failure is an ImageReadError naming the file; never returns zeros in place of an
    image.

    ``out``, where given, is a (y, x) array (a view into a stitched well may be strided)
    that a PNG of its size and pixel type is decoded straight into, and returned: the
    stitch step then copies no pixel. A file that does not fit it is decoded afresh and
    returned, for the caller's checks to name what differs."""
    kind = "TIFF" if path.lower().endswith(TIFF_SUFFIXES) else "PNG"
    try:
        if kind == "TIFF":
            array = tifffile.imread(path)
            if array.size == 0:  # tifffile reads a damaged header as no pages
                raise ImageReadError(f"{path}: corrupt or truncated TIFF (no pixels)")
            return array
        with open(path, "rb") as handle:
            data = handle.read()
        header = png_header(data[:33])
        if header is not None and (fault := png_format_error(path, *header)):
            raise ImageReadError(fault)
        if out is not None:
            try:
                return imagecodecs.png_decode(data, out=out)
            except ValueError:  # another size or pixel type (or not a PNG): decode afresh
                pass
        array = imagecodecs.png_decode(data)
        if array.ndim != 2:  # e.g. a greyscale PNG with transparency, which libpng widens
            mode = PNG_COLOUR_MODES.get(array.shape[-1], f"{array.shape[-1]} samples a pixel")
            raise ImageReadError(f"{path}: mode {mode!r}, {GREYSCALE_EXPECTED}")
        return array
    except FileNotFoundError as error:
        raise ImageReadError(missing_file_reason(path)) from error
    except ImageReadError:
        raise
    except (imagecodecs.PngError, OSError, ValueError, tifffile.TiffFileError) as error:
        raise ImageReadError(f"{path}: corrupt or truncated {kind} ({error})") from error


def missing_file_reason(path: str) -> str:
    """"file not found", and whether its whole folder is missing (a plate's folder not
    copied, a misspelt pattern), which says more than the file's name."""
    folder = os.path.dirname(path)
    if folder and not os.path.isdir(folder):
        return f"{path}: file not found (its folder {folder} does not exist)"
    return f"{path}: file not found"


def png_header_dtype(path: str) -> np.dtype | None:
    """The pixel type of a greyscale PNG read from its IHDR header alone (33 bytes, no
    decoding); None where the file is not a PNG, not 8- or 16-bit greyscale, or the header
    is not as expected (the caller then decodes it, which names any fault)."""
    try:
        with open(path, "rb") as handle:
            header = png_header(handle.read(33))
    except OSError:
        return None
    if header is None or header[1] != 0:
        return None
    return PNG_GREY_DEPTHS.get(header[0])


def as_channel_pages(array: np.ndarray, path: str, pages: int, channel_axis: int) -> np.ndarray:
    """One file's array as (pages, y, x): a 2-D image is one page, a 3-D one has its
    channels along ``channel_axis``; any other shape or number of pages is an
    ImageReadError naming the file."""
    if array.ndim == 2:
        array = array[None]
    elif array.ndim == 3:
        array = np.moveaxis(array, channel_axis, 0)
    else:
        raise ImageReadError(f"{path}: {array.ndim}-D image {array.shape}, expected (y, x) or (channel, y, x)")
    if array.shape[0] != pages:
        raise ImageReadError(
            f"{path}: holds {array.shape[0]} channel page(s) along axis {channel_axis}, expected {pages} "
            "(dataset.channels; dataset.channel_axis says which axis holds them)"
        )
    return array


def read_site(
    paths: list[str], site_size: int, n_channels: int | None = None, channel_axis: int = 0, dtype=None, out: np.ndarray | None = None
) -> np.ndarray:
    """All channels of one site as (channel, y, x) uint8 or uint16, the one way a site is
    read: one file per channel (``len(paths) == n_channels``), or one multi-page or
    multi-channel TIFF holding all ``n_channels`` channels in order along
    ``channel_axis``. Each file must be ``site_size`` px square, 8- or 16-bit (``dtype``,
    when given, is the type every file must have); otherwise an ImageReadError names it.
    With ``out`` ((channel, y, x) of ``dtype``, e.g. the site's place in a stitched
    well), the site is written there (PNGs decoded in place) and ``out`` is returned."""
    n_channels = len(paths) if n_channels is None else n_channels
    if n_channels % len(paths):
        raise ValueError(f"{len(paths)} files for {n_channels} channels")
    per_file = n_channels // len(paths)
    pages = []
    for k, path in enumerate(paths):
        into = out[k] if out is not None and per_file == 1 else None
        array = as_channel_pages(read_image(path, into), path, per_file, channel_axis)
        if array.dtype not in IMAGE_DTYPES:
            raise ImageReadError(f"{path}: pixel type {array.dtype}, expected 8-bit (uint8) or 16-bit (uint16) greyscale")
        if dtype is not None and array.dtype != np.dtype(dtype):
            raise ImageReadError(f"{path}: pixel type {array.dtype}, but the plate's other images are {np.dtype(dtype)}")
        if array.shape[1:] != (site_size, site_size):
            raise ImageReadError(
                f"{path}: size {array.shape[2]}x{array.shape[1]}, expected {site_size}x{site_size} (dataset.site_size)"
            )
        pages.append(array)
    if out is None:
        return pages[0] if len(pages) == 1 else np.concatenate(pages)
    for k, array in enumerate(pages):
        target = out[k * per_file : (k + 1) * per_file]
        if not np.may_share_memory(array, target):  # not decoded in place (a TIFF)
            target[...] = array
    return out


@dataclass(frozen=True)
class IntensityRule:
    """How a plate's pixels become the store's uint8: ``luts`` (channel, 65536) uint8
    lookup tables for 16-bit images (None: 8-bit images are stored as read); ``attrs``
    records the rule in the store's attributes."""

    dtype: np.dtype
    luts: np.ndarray | None
    attrs: dict

    def apply(self, site: np.ndarray) -> np.ndarray:
        """(channel, y, x) of this rule's dtype -> uint8."""
        if self.luts is None:
            return site
        return np.stack([lut[channel] for lut, channel in zip(self.luts, site)])


def histogram_percentiles(hist: np.ndarray, percentiles) -> np.ndarray:
    """Per row of ``hist`` (channel, grey level) counts, the grey levels at ``percentiles``
    (0-100): the lowest level whose cumulative count reaches that share (exact, no
    interpolation). Returns (channel, len(percentiles)) float."""
    cumulative = np.cumsum(hist, axis=1)
    total = cumulative[:, -1:]
    if (total == 0).any():
        raise ValueError("no pixel to take intensity percentiles from")
    # At least one pixel: percentile 0 is the darkest level that occurs.
    targets = np.maximum(np.asarray(percentiles, dtype=float)[None, :] / 100.0 * total, 1)
    return np.stack([np.searchsorted(c, t, side="left") for c, t in zip(cumulative, targets)]).astype(float)


def linear_luts(low, high, levels: int = 65536) -> np.ndarray:
    """(channel, levels) uint8 lookup tables mapping grey level ``low`` to 0 and ``high``
    to 255 per channel, linear between, clipped outside (``high`` at least ``low`` + 1)."""
    low = np.asarray(low, dtype=float)[:, None]
    high = np.maximum(np.asarray(high, dtype=float)[:, None], low + 1.0)
    scaled = (np.arange(levels, dtype=float)[None, :] - low) * (255.0 / (high - low))
    return np.clip(np.rint(scaled), 0, 255).astype(np.uint8)


def rescale_rule(hist: np.ndarray, low_percentile: float, high_percentile: float, reference_wells: list[str]) -> IntensityRule:
    """The rule for a 16-bit plate from ``hist`` (channel, 65536), the pixel counts of its
    reference wells: per channel, the ``low_percentile`` grey level maps to 0 and the
    ``high_percentile`` one to 255 (docs/tuning.md, "16-bit images")."""
    low, high = histogram_percentiles(hist, [low_percentile, high_percentile]).T
    high = np.maximum(high, low + 1.0)
    attrs = {
        "source_dtype": "uint16",
        "rule": "linear from the low to the high percentile of the reference wells, per channel, clipped",
        "percentiles": [float(low_percentile), float(high_percentile)],
        "low": low.tolist(),
        "high": high.tolist(),
        "reference_wells": list(reference_wells),
    }
    return IntensityRule(np.dtype(np.uint16), linear_luts(low, high), attrs)


AS_READ = IntensityRule(np.dtype(np.uint8), None, {"source_dtype": "uint8", "rule": "stored as read"})
# A uint16 store keeps 16-bit images as read (benchmarks/stitch_16bit.py compares it; the
# workflow's stores are uint8).
KEEP_16 = IntensityRule(np.dtype(np.uint16), None, {"source_dtype": "uint16", "rule": "stored as read"})


def read_site_into(out: np.ndarray, paths: list[str], site_size: int, channel_axis: int = 0, rule: IntensityRule = AS_READ) -> None:
    """Decode one site's files into ``out`` (channel, S, S), uint8 (or uint16 with
    KEEP_16), through ``rule``: 8-bit PNGs stored as read are decoded in place."""
    if rule.luts is None:
        read_site(paths, site_size, out.shape[0], channel_axis, rule.dtype, out=out)
    else:
        out[...] = rule.apply(read_site(paths, site_size, out.shape[0], channel_axis, rule.dtype))


def stitch_well_fields(
    write_field,
    buffer: np.ndarray,
    well_sites: list[tuple[int, str, list[str]]],
    site_layout: list[list[int]],
    site_size: int,
    on_bad_image: str,
    channel_axis: int = 0,
    rule: IntensityRule = AS_READ,
) -> tuple[np.ndarray, list[dict]]:
    """Decode the sites of one well ((site, site_id, paths) as from site_paths_by_well),
    one at a time, into ``buffer`` (channel, S, S), and hand every field of the layout to
    ``write_field(row, column, pixels)``: a site's pixels, or zeros for a gap, a site the
    well lacks, or a site dropped because a file is unreadable (``on_bad_image ==
    "drop"``); with ``"error"`` the ImageReadError stops the job. ``pixels`` is
    ``buffer``, valid until the call returns.

    Returns a bool vector over the layout's sites 1..n (True = imaged), so no later step
    mistakes a zeroed site for a dark field, and the QC records of dropped sites.
    """
    fields = site_fields(site_layout)
    valid = np.zeros(len(fields), dtype=bool)
    dropped = []
    for site, site_id, paths in well_sites:
        try:
            read_site_into(buffer, paths, site_size, channel_axis, rule)
            valid[site - 1] = True
        except ImageReadError as error:
            if on_bad_image != "drop":
                raise
            buffer[...] = 0
            dropped.append({"site_id": site_id, "site": site, "reason": str(error)})
        write_field(*fields[int(site)], buffer)
    present = {int(site) for site, _, _ in well_sites}
    empty = [(r, c) for site, r, c in layout_fields(site_layout) if site not in present]
    if empty:
        buffer[...] = 0
        for r, c in empty:
            write_field(r, c, buffer)
    return valid, dropped


def site_files(pattern: str, experiment: str, plate, well: str, site: int, channels: list[int]) -> list[str]:
    """The files of one site: one per channel, or a single file (holding every channel)
    where the pattern has no {channel}."""
    return list(dict.fromkeys(image_path(pattern, experiment, plate, well, site, channel) for channel in channels))


def site_paths_by_well(plate_sites, pattern: str, channels: list[int]) -> dict[str, list[tuple[int, str, list[str]]]]:
    """Per well, in table order: (site, site_id, files) of each of its sites (site_files).
    Built once per plate with plain lists (no per-well DataFrame work in the hot loop)."""
    by_well: dict[str, list] = {}
    columns = ("experiment", "plate", "well", "site", "site_id")
    for experiment, plate, well, site, site_id in zip(*(plate_sites[c].tolist() for c in columns)):
        by_well.setdefault(well, []).append((int(site), site_id, site_files(pattern, experiment, plate, well, site, channels)))
    return by_well


def reference_wells(plate_sites, wells: list[str], n: int) -> list[str]:
    """Up to ``n`` of the plate's untreated wells (treatment empty; all wells where there
    is no such well or no treatment column), evenly spread over the plate order: the wells
    whose pixels set a 16-bit plate's intensity rule."""
    untreated = np.ones(len(wells), dtype=bool)
    if "treatment" in plate_sites.columns:
        treated = set(plate_sites.loc[plate_sites["treatment"].notna(), "well"])
        untreated = np.array([well not in treated for well in wells], dtype=bool)
        if not untreated.any():
            untreated[:] = True
    return [wells[i] for i in estimate_wells(untreated, n)]


def well_histogram(well_sites, site_size: int, n_channels: int, channel_axis: int) -> tuple[np.ndarray, list[str]]:
    """(channel, 65536) pixel counts of the readable 16-bit sites of one well, and why each
    other site could not be read (it is left out here; the stitching pass reports or drops
    it)."""
    hist = np.zeros((n_channels, 65536), dtype=np.int64)
    reasons = []
    for _, _, paths in well_sites:
        try:
            site = read_site(paths, site_size, n_channels, channel_axis, np.uint16)
        except ImageReadError as error:
            reasons.append(str(error))
            continue
        for channel, pixels in enumerate(site):
            hist[channel] += np.bincount(pixels.ravel(), minlength=65536)
    return hist, reasons


# How many wells' first sites (every file of each) decide a plate's pixel type, and how
# many example files and reasons an error message shows.
PIXEL_TYPE_WELLS = 8
EXAMPLES = 3


def plate_name(plate_sites) -> str:
    """How a message names the plate of ``plate_sites``: its plate_id, else experiment and
    plate."""
    if "plate_id" in plate_sites.columns:
        return ", ".join(map(str, dict.fromkeys(plate_sites["plate_id"].tolist())))
    pairs = dict.fromkeys(zip(plate_sites["experiment"].tolist(), plate_sites["plate"].tolist()))
    return ", ".join(f"{plate} (experiment {experiment})" for experiment, plate in pairs)


def file_pixel_type(path: str) -> np.dtype:
    """The pixel type (uint8 or uint16) of one image file, from its header where it can
    be (a greyscale PNG's IHDR, a TIFF's first series) and otherwise by decoding it; a
    file that cannot be read, or of another type, is an ImageReadError naming it."""
    dtype = png_header_dtype(path)
    if dtype is None and path.lower().endswith(TIFF_SUFFIXES):
        try:
            with tifffile.TiffFile(path) as tiff:
                dtype = np.dtype(tiff.series[0].dtype)
        except (OSError, ValueError, IndexError, tifffile.TiffFileError):
            dtype = None  # read_image below names the fault
    if dtype is None:
        dtype = read_image(path).dtype
    if dtype not in IMAGE_DTYPES:
        raise ImageReadError(f"{path}: pixel type {dtype}, expected 8-bit (uint8) or 16-bit (uint16) greyscale")
    return dtype


def no_readable_image_error(plate: str, what: str, reasons: list[str]) -> ImageReadError:
    """The error for a plate of which nothing could be read (``what``, e.g. "no image of it
    could be read"): the job stops rather than write a store of dropped sites only, which
    every later step would refuse; the first ``reasons`` say why (a missing folder, a
    pattern that names no file)."""
    shown = "; ".join(reasons[:EXAMPLES]) + (f"; and {len(reasons) - EXAMPLES} more" if len(reasons) > EXAMPLES else "")
    return ImageReadError(
        f"plate {plate}: {what}, so it cannot be stitched (on_bad_image: drop drops bad sites, "
        f"not a whole plate); first reasons: {shown}"
    )


def majority_pixel_type(types: dict[str, np.dtype], plate: str, on_bad_image: str) -> np.dtype:
    """The pixel type of a plate from ``types`` (file -> uint8 or uint16, a sample of its
    files, in plate order). Where both occur the plate mixes 8- and 16-bit images: with
    ``on_bad_image == "error"`` an ImageReadError naming the plate and example files of
    each type; with "drop" the more common type (a tie: the first file's), so that the
    stitching pass drops the sites of the other type, each naming its file."""
    by_type: dict[np.dtype, list[str]] = {}
    for path, dtype in types.items():
        by_type.setdefault(np.dtype(dtype), []).append(path)
    if not by_type:
        raise ValueError(f"plate {plate}: no file to take the pixel type from")
    if len(by_type) > 1 and on_bad_image != "drop":
        examples = "; ".join(
            f"{dtype} ({dtype.itemsize * 8}-bit): " + ", ".join(paths[:EXAMPLES]) + (f" and {len(paths) - EXAMPLES} more" if len(paths) > EXAMPLES else "")
            for dtype, paths in by_type.items()
        )
        raise ImageReadError(
            f"plate {plate} mixes 8-bit and 16-bit images among the {len(types)} files sampled (the first site of "
            f"up to {PIXEL_TYPE_WELLS} wells, every channel): {examples}; a plate's images must all be one pixel type"
        )
    # max keeps the first of equal counts: dicts keep the order the files were read in.
    return max(by_type, key=lambda dtype: len(by_type[dtype]))


def plate_pixel_type(plate: str, by_well: dict, on_bad_image: str, n_wells: int = PIXEL_TYPE_WELLS) -> np.dtype:
    """Whether a plate's images are uint8 or uint16 (majority_pixel_type), from every file
    of the first site of up to ``n_wells`` wells spread over the plate (``by_well`` as from
    site_paths_by_well): one file alone would decide wrongly where it is the odd one, or
    where one channel alone differs. An unreadable file stops the job (``on_bad_image ==
    "error"``, the ImageReadError naming it) or is passed over; where no sampled file can be
    read, the plate's other files are tried in order until one can, and where none can the
    plate is an ImageReadError naming it (no_readable_image_error). Headers are read where
    they say the type (file_pixel_type): decoding one whole site here, on one thread
    before the pool starts, cost about 2.5 % of a 1024 px plate's stitch."""
    wells = list(by_well)
    sampled = [by_well[wells[i]][0] for i in estimate_wells(np.ones(len(wells), dtype=bool), n_wells) if by_well[wells[i]]]
    types, reasons, tried = {}, [], set()

    def try_file(path):
        tried.add(path)
        try:
            types[path] = file_pixel_type(path)
        except ImageReadError as error:
            if on_bad_image != "drop":
                raise
            reasons.append(str(error))

    for _, _, paths in sampled:
        for path in paths:
            try_file(path)
    if not types:
        for path in (path for sites in by_well.values() for _, _, paths in sites for path in paths if path not in tried):
            try_file(path)
            if types:
                break
    if not types:
        n_sites = sum(map(len, by_well.values()))
        raise no_readable_image_error(plate, f"no image of it could be read ({len(tried)} files of {n_sites} sites tried)", reasons)
    return majority_pixel_type(types, plate, on_bad_image)


def plate_intensity_rule(plate_sites, wells, by_well, site_size: int, n_channels: int, channel_axis: int, rescale: dict | None, on_bad_image: str, pool) -> IntensityRule:
    """The plate's IntensityRule: its pixel type (plate_pixel_type) says whether its images
    are 8-bit (stored as read: AS_READ) or 16-bit (rescale_rule over its reference_wells,
    with ``rescale``'s low_percentile, high_percentile and reference_wells, the config's
    store.rescale). A file of the other type is then an error naming it, or its site is
    dropped (read_site)."""
    plate = plate_name(plate_sites)
    dtype = plate_pixel_type(plate, by_well, on_bad_image)
    if dtype == np.uint8:
        return AS_READ
    if rescale is None:
        raise ValueError(f"plate {plate}: its images are 16-bit: stitching them needs a rescale rule (store.rescale)")
    references = reference_wells(plate_sites, wells, rescale["reference_wells"])
    parts = list(pool.map(lambda well: well_histogram(by_well.get(well, []), site_size, n_channels, channel_axis), references))
    hist = sum((part for part, _ in parts), np.zeros((n_channels, 65536), dtype=np.int64))
    if (hist.sum(axis=1) == 0).any():
        reasons = [reason for _, why in parts for reason in why]
        shown = "; ".join(reasons[:EXAMPLES]) or "they list no site"
        raise ImageReadError(
            f"plate {plate}: no readable 16-bit site in the reference wells {references} to set the plate's "
            f"intensity rule from; first reasons: {shown}"
        )
    return rescale_rule(hist, rescale["low_percentile"], rescale["high_percentile"], references)


def stitch_plate(
    plate_sites,
    store,
    pattern: str,
    channels: list[int],
    on_bad_image: str,
    pool,
    progress=None,
    channel_axis: int = 0,
    rescale: dict | None = None,
) -> list[dict]:
    """Decode, stitch and write every well of one plate into an open PlateStore.

    8-bit images are stored as read; 16-bit ones through the plate's rescale rule (kept
    as read where the store is uint16)
    (plate_intensity_rule, ``rescale``: low_percentile, high_percentile, reference_wells),
    which is recorded in the store's ``intensity`` attribute. Each well is one task on
    ``pool`` (PNG and TIFF decoding and Blosc release the GIL): its sites are decoded one
    at a time into a buffer of the thread's own, and each is compressed and written as
    its chunk at once (stitch_well_fields, PlateStore.write_field): memory is one site a
    thread, and no thread waits on another. ``progress(done, total)`` is called in plate
    order. Returns the QC records of dropped sites; a plate none of whose sites could be
    read is an ImageReadError naming it (no_readable_image_error), before its store is
    finished.
    """
    wells = store.wells
    by_well = site_paths_by_well(plate_sites, pattern, channels)
    layout, site_size = store.site_layout, store.site_size
    if store.images.dtype == np.uint16:
        rule = KEEP_16
    else:
        rule = plate_intensity_rule(plate_sites, wells, by_well, site_size, len(channels), channel_axis, rescale, on_bad_image, pool)
    valid_all = np.zeros((len(wells), len(layout_sites(layout))), dtype=bool)
    dropped: list[dict] = []
    buffers = threading.local()

    def stitch_well(index: int):
        buffer = getattr(buffers, "site", None)
        if buffer is None:
            buffer = buffers.site = np.empty((store.images.shape[1], site_size, site_size), dtype=store.images.dtype)
        write_field = functools.partial(store.write_field, index)
        return stitch_well_fields(write_field, buffer, by_well.get(wells[index], []), layout, site_size, on_bad_image, channel_axis, rule)

    for index, (valid, bad) in enumerate(pool.map(stitch_well, range(len(wells)))):
        valid_all[index] = valid
        dropped.extend(dict(record, well=wells[index]) for record in bad)
        if progress is not None:
            progress(index + 1, len(wells))
    if not valid_all.any():  # every site dropped: no store (see no_readable_image_error)
        what = f"none of its {len(dropped)} sites could be read (every one was dropped)"
        raise no_readable_image_error(plate_name(plate_sites), what, [record["reason"] for record in dropped])
    store.write_site_valid(valid_all)
    store.group.attrs["intensity"] = rule.attrs
    return dropped


def _size_and_mtime(paths: list[str]) -> list[tuple[int, int]]:
    stats = []
    for path in paths:
        try:
            stat = os.stat(path)
            stats.append((stat.st_size, stat.st_mtime_ns))
        except FileNotFoundError:
            stats.append((-1, -1))
    return stats


def image_manifest_digest(plate_sites, pattern: str, channels: list[int], threads: int = 8) -> str:
    """Hash of the size and modification time (ns) of every channel image of one plate's
    sites (the plate's own files only; a missing file counts as size and time -1).

    A param of the stitch job, so a re-exported or repaired image reruns its plate without
    making the images O(sites) inputs of the DAG. Costs one os.stat per file, spread over
    ``threads`` threads (stat releases the GIL: on a network file system the latency of
    the calls overlaps).
    """
    columns = ("experiment", "plate", "well", "site")
    paths = [
        path
        for experiment, plate, well, site in zip(*(plate_sites[c].tolist() for c in columns))
        for path in site_files(pattern, experiment, plate, well, site, channels)
    ]
    step = max(1, -(-len(paths) // threads))
    with ThreadPoolExecutor(max_workers=threads) as pool:
        parts = list(pool.map(_size_and_mtime, [paths[i : i + step] for i in range(0, len(paths), step)]))
    stats = [stat for part in parts for stat in part]
    return hashlib.blake2b(np.asarray(stats, dtype=np.int64).reshape(-1, 2).tobytes(), digest_size=16).hexdigest()
