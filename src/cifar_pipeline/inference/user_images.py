"""Reading what users have into uint8 (N, 32, 32, 3): image files, folders, .npy arrays, CIFAR batches.

Photos of any size and mode are centre-cropped to a square and resized to 32x32 with a
Lanczos filter (Pillow's `ImageOps.fit`), after conversion to 8-bit RGB: greyscale is repeated
over the three channels, 16-bit greyscale is scaled (65535 -> 255, not clipped), and anything
transparent (an alpha channel, a palette's or a PNG `tRNS` colour key) is composited over
white. Nothing else happens to the pixels: the model normalises its own input.

Every input is bounded before it is decoded: only regular files are opened (a named pipe
would block forever), an image may hold at most MAX_PIXELS pixels by its header, and an
array's header must match the file's size.
"""

from __future__ import annotations

import math
import re
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from cifar_pipeline.core.datasets import IMAGE_SHAPE, SPECS, DataFormatError, parse_records
from cifar_pipeline.core.errors import PipelineError

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp", ".tif", ".tiff")
# Above a 48-megapixel phone photo (8000x6000) with room to spare; what a decoded RGBA copy of
# that costs (400 MB) is the memory one input may take. Pillow's own guard warns at 89 MP.
MAX_PIXELS = 100_000_000
SIXTEEN_BIT_MODES = ("I;16", "I;16L", "I;16B", "I;16N", "I")  # Pillow opens 16-bit greyscale PNG as these


class InputError(PipelineError):
    """An input that is not an image, an image folder, a fitting array or a CIFAR batch."""


@dataclass(frozen=True)
class Inputs:
    names: list[str]  # one per image: the file, or file[index] for arrays and batches
    images: np.ndarray  # uint8 (N, 32, 32, 3)


def _to_rgb(image):
    """8-bit RGB from any mode Pillow opens, scaled rather than clipped, transparency over white."""
    from PIL import Image

    if image.mode in SIXTEEN_BIT_MODES:
        grey = np.asarray(image, dtype=np.float64) / 257.0  # 0..65535 -> 0..255
        image = Image.fromarray(np.clip(np.rint(grey), 0, 255).astype(np.uint8), "L")
    elif image.mode == "F":
        raise ValueError("a 32-bit floating-point image, whose pixel range is not known")
    if image.mode in ("RGBA", "LA", "La", "RGBa", "PA", "P") or "transparency" in image.info:
        rgba = image.convert("RGBA")  # applies a palette's or a tRNS colour key's transparency
        image = Image.alpha_composite(Image.new("RGBA", rgba.size, (255, 255, 255, 255)), rgba)
    return image.convert("RGB")


def _too_big(path: Path, pixels: str) -> InputError:
    return InputError(
        f"{path} is {pixels} by its header, above the {MAX_PIXELS // 1_000_000}-megapixel limit "
        f"for one input (a decompression bomb, or a huge scan); resize it first"
    )


def read_image(path: Path) -> np.ndarray:
    from PIL import Image, ImageOps, UnidentifiedImageError

    Image.MAX_IMAGE_PIXELS = MAX_PIXELS  # Pillow's own guard, at 2x this, refuses what is too big to open
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)  # the check below says it in one line
            with Image.open(path) as opened:
                width, height = opened.size
                if width * height > MAX_PIXELS:
                    raise _too_big(path, f"{width * height / 1e6:,.0f} megapixels ({width}x{height})")
                image = _to_rgb(ImageOps.exif_transpose(opened))
                square = ImageOps.fit(image, IMAGE_SHAPE[:2], method=Image.Resampling.LANCZOS)
                return np.asarray(square, dtype=np.uint8)
    except Image.DecompressionBombError as err:
        pixels = int(re.search(r"\((\d+) pixels\)", str(err)).group(1))  # Pillow: "Image size (N pixels) exceeds"
        raise _too_big(path, f"{pixels / 1e6:,.0f} megapixels") from None
    except (UnidentifiedImageError, OSError, ValueError, SyntaxError) as err:
        # SyntaxError: Pillow's word for some malformed headers; ValueError: modes it cannot convert
        raise InputError(
            f"{path} is not an image Pillow can read ({type(err).__name__}: {str(err)[:120]}); give PNG or JPEG files"
        ) from None


def read_array(path: Path) -> np.ndarray:
    """A .npy of uint8 (N, 32, 32, 3) or (32, 32, 3), its header checked against the file before reading."""
    fmt = np.lib.format
    try:
        with open(path, "rb") as handle:
            head = handle.read(6)
            if head != fmt.MAGIC_PREFIX:
                kind = "an .npz archive (several arrays)" if head.startswith(b"PK") else "not a .npy array"
                raise InputError(f"{path} is {kind}; save the one uint8 (N, 32, 32, 3) array with numpy.save")
            handle.seek(0)
            version = fmt.read_magic(handle)
            read_header = fmt.read_array_header_1_0 if version == (1, 0) else fmt.read_array_header_2_0
            shape, _fortran, dtype = read_header(handle)  # bounded: numpy refuses a header over 10 kB
            data_start = handle.tell()
    except (ValueError, OSError, SyntaxError) as err:
        raise InputError(f"{path} is not a readable .npy array ({str(err)[:120]})") from None
    if shape == IMAGE_SHAPE:
        shape = (1, *IMAGE_SHAPE)
    if dtype != np.uint8 or len(shape) != 4 or tuple(shape[1:]) != IMAGE_SHAPE:
        raise InputError(
            f"{path} holds a {dtype} array of shape {shape}; expected uint8 (N, 32, 32, 3), "
            f"raw 0-255 pixels in RGB order"
        )
    have = path.stat().st_size - data_start
    if math.prod(shape) > have:
        raise InputError(
            f"{path}: its header claims {shape[0]:,} images ({math.prod(shape):,} bytes) but the file holds "
            f"{have:,} bytes of pixels; it is truncated or not written by numpy.save"
        )
    if shape[0] == 0:
        raise InputError(f"{path} holds no images (shape {shape}); give at least one")
    array = np.load(path, mmap_mode="r", allow_pickle=False)  # read_inputs' concatenation reads it, once
    return array.reshape(shape)


def read_batch(path: Path, num_classes: int) -> np.ndarray:
    """An official CIFAR binary batch; refused if its records belong to the other dataset."""
    largest = max(spec.max_member_bytes for spec in SPECS.values())
    if path.stat().st_size > largest:
        raise InputError(
            f"{path} is {path.stat().st_size:,} bytes, larger than any official CIFAR batch ({largest:,}); "
            f"give one batch file, or split it"
        )
    raw = np.fromfile(path, dtype=np.uint8)
    fits = [spec for spec in SPECS.values() if raw.size and raw.size % spec.record_size == 0]
    mine = [spec for spec in fits if num_classes in spec.num_classes.values()]
    if not mine:
        other = f"a {fits[0].name} batch" if fits else "not a CIFAR binary batch"
        raise InputError(
            f"{path} is {other}, but the model has {num_classes} classes; give it a batch of its own dataset"
        )
    try:
        images, _labels = parse_records(raw, mine[0], str(path))
    except DataFormatError as err:
        raise InputError(str(err)) from None
    return images


def read_inputs(paths: list[Path], num_classes: int) -> Inputs:
    names: list[str] = []
    arrays: list[np.ndarray] = []
    for path in paths:
        if path.is_dir():
            files = sorted(p for p in path.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)
            if not files:
                raise InputError(
                    f"{path} holds no images ({', '.join(IMAGE_SUFFIXES)}); give image files or a folder of them"
                )
            for file in files:
                names.append(str(file))
                arrays.append(read_image(file)[None])
        elif not path.exists():
            raise InputError(f"{path} does not exist")
        elif not path.is_file():  # opening a named pipe waits for a writer forever
            raise InputError(f"{path} is not a regular file (a pipe, device or socket); give image files")
        elif path.suffix.lower() == ".npy":
            array = read_array(path)
            names += [f"{path}[{i}]" for i in range(len(array))]
            arrays.append(array)
        elif path.suffix.lower() == ".bin":
            batch = read_batch(path, num_classes)
            names += [f"{path}[{i}]" for i in range(len(batch))]
            arrays.append(batch)
        else:
            names.append(str(path))
            arrays.append(read_image(path)[None])
    return Inputs(names, np.concatenate(arrays) if arrays else np.empty((0, *IMAGE_SHAPE), np.uint8))
