"""Reading what users have into uint8 (N, 32, 32, 3): image files, folders, .npy arrays, CIFAR batches.

Photos of any size and mode are centre-cropped to a square and resized to 32x32 with a
Lanczos filter (Pillow's `ImageOps.fit`), after conversion to RGB: greyscale is repeated
over the three channels, RGBA is composited over white. Nothing else happens to the pixels:
the model normalises its own input.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from cifar_pipeline.datasets import IMAGE_SHAPE, SPECS, DataFormatError, parse_records
from cifar_pipeline.errors import PipelineError

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp", ".tif", ".tiff")


class InputError(PipelineError):
    """An input that is not an image, an image folder, a fitting array or a CIFAR batch."""


@dataclass(frozen=True)
class Inputs:
    names: list[str]  # one per image: the file, or file[index] for arrays and batches
    images: np.ndarray  # uint8 (N, 32, 32, 3)


def read_image(path: Path) -> np.ndarray:
    from PIL import Image, ImageOps, UnidentifiedImageError

    try:
        with Image.open(path) as opened:
            image = ImageOps.exif_transpose(opened)
            if image.mode in ("RGBA", "LA", "P"):
                rgba = image.convert("RGBA")
                image = Image.alpha_composite(Image.new("RGBA", rgba.size, (255, 255, 255, 255)), rgba)
            image = image.convert("RGB")
            square = ImageOps.fit(image, IMAGE_SHAPE[:2], method=Image.Resampling.LANCZOS)
            return np.asarray(square, dtype=np.uint8)
    except (UnidentifiedImageError, OSError) as err:
        raise InputError(
            f"{path} is not an image Pillow can read ({type(err).__name__}); give PNG or JPEG files"
        ) from None


def read_array(path: Path) -> np.ndarray:
    try:
        array = np.load(path, allow_pickle=False)
    except (ValueError, OSError) as err:
        raise InputError(f"{path} is not a readable .npy array ({err})") from None
    if array.shape == IMAGE_SHAPE:
        array = array[None]
    if array.dtype != np.uint8 or array.ndim != 4 or array.shape[1:] != IMAGE_SHAPE:
        raise InputError(
            f"{path} holds a {array.dtype} array of shape {array.shape}; expected uint8 (N, 32, 32, 3), "
            f"raw 0-255 pixels in RGB order"
        )
    return array


def read_batch(path: Path, num_classes: int) -> np.ndarray:
    """An official CIFAR binary batch; refused if its records belong to the other dataset."""
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
