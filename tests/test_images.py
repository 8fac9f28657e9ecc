"""Users' files read as the model should see them, or refused in one line before they cost memory or time."""

from __future__ import annotations

import os
import struct
import subprocess
import sys
import zlib
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from cifar_pipeline.inference.user_images import MAX_PIXELS, InputError, read_inputs


def read(*paths: Path) -> np.ndarray:
    return read_inputs(list(paths), 10).images


def png_claiming(path: Path, width: int, height: int) -> Path:
    """A tiny PNG whose header claims width x height pixels: a decompression bomb's calling card."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    header = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    path.write_bytes(
        b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(b"\0" * 64)) + chunk(b"IEND", b"")
    )
    return path


def test_16_bit_greyscale_is_scaled_like_its_8_bit_copy_not_clipped(tmp_path):
    grey8 = np.random.default_rng(0).integers(0, 256, (32, 32), dtype=np.uint8)
    Image.fromarray(grey8, "L").save(tmp_path / "8.png")
    Image.fromarray(grey8.astype(np.uint16) * 257).save(tmp_path / "16.png")  # the same picture, 16 bits deep
    assert Image.open(tmp_path / "16.png").mode == "I;16"
    eight, sixteen = read(tmp_path / "8.png", tmp_path / "16.png").astype(int)
    assert np.abs(eight - sixteen).max() <= 1 and abs(sixteen.mean() - grey8.mean()) < 1


def test_transparency_of_every_kind_is_composited_over_white(tmp_path):
    rgb = np.zeros((32, 32, 3), np.uint8)
    rgb[:16] = (10, 20, 30)  # the top half is the colour key: transparent
    Image.fromarray(rgb).save(tmp_path / "trns.png", transparency=(10, 20, 30))
    palette = Image.fromarray((rgb[..., 0] == 0).astype(np.uint8), "P")  # index 0: the key, 1: black
    palette.putpalette([10, 20, 30, 0, 0, 0])
    palette.save(tmp_path / "palette.png", transparency=0)
    grey = np.zeros((32, 32), np.uint8)
    grey[:16] = 7
    Image.fromarray(grey, "L").save(tmp_path / "grey.png", transparency=7)
    for image in read(tmp_path / "trns.png", tmp_path / "palette.png", tmp_path / "grey.png"):
        assert (image[:14] == 255).all() and (image[18:] == 0).all()


@pytest.mark.parametrize(("width", "height"), [(65535, 65535), (10001, 10001)])
def test_an_image_too_big_to_decode_is_refused_by_its_header(tmp_path, width, height):
    path = png_claiming(tmp_path / "bomb.png", width, height)
    with pytest.raises(InputError, match=rf"above the {MAX_PIXELS // 10**6}-megapixel limit for one input"):
        read(path)


def test_a_named_pipe_is_refused_without_waiting_for_a_writer(tmp_path):
    os.mkfifo(tmp_path / "fifo.png")
    with pytest.raises(InputError, match="is not a regular file"):
        read(tmp_path / "fifo.png")
    (tmp_path / "folder").mkdir()
    os.mkfifo(tmp_path / "folder" / "pipe.png")
    Image.new("RGB", (4, 4)).save(tmp_path / "folder" / "real.png")
    assert read_inputs([tmp_path / "folder"], 10).names == [str(tmp_path / "folder" / "real.png")]


def test_arrays_are_checked_by_their_header_before_they_are_read(tmp_path):
    np.savez(tmp_path / "pair.npy", a=np.zeros((1, 32, 32, 3), np.uint8))
    os.replace(tmp_path / "pair.npy.npz", tmp_path / "pair.npy")
    with pytest.raises(InputError, match=r"is an .npz archive"):
        read(tmp_path / "pair.npy")
    np.save(tmp_path / "empty.npy", np.zeros((0, 32, 32, 3), np.uint8))
    with pytest.raises(InputError, match=r"holds no images"):
        read(tmp_path / "empty.npy")
    with open(tmp_path / "huge.npy", "wb") as out:  # a header claiming 10^11 images over 3 kB of pixels
        header = {"descr": "|u1", "fortran_order": False, "shape": (10**11, 32, 32, 3)}
        np.lib.format.write_array_header_1_0(out, header)
        out.write(bytes(3072))
    with pytest.raises(InputError, match=r"header claims 100,000,000,000 images .* holds 3,072 bytes"):
        read(tmp_path / "huge.npy")
    np.save(tmp_path / "one.npy", np.full((32, 32, 3), 9, np.uint8))
    assert read(tmp_path / "one.npy").shape == (1, 32, 32, 3)


def test_a_batch_file_larger_than_any_official_one_is_refused_before_it_is_read(tmp_path):
    with open(tmp_path / "big.bin", "wb") as out:
        out.truncate(50_000 * 3074 + 3074)  # sparse: costs no disk
    with pytest.raises(InputError, match="larger than any official CIFAR batch"):
        read(tmp_path / "big.bin")


@pytest.mark.slow
def test_cifar_predict_survives_odd_file_names_and_a_closed_pipe(tmp_path):
    """A non-UTF-8 name printed to a strict UTF-8 stdout, and `| head -1`: no traceback either way."""
    import keras

    inputs = keras.Input((32, 32, 3), dtype="uint8")
    outputs = keras.layers.Dense(10, activation="softmax")(keras.layers.Flatten()(inputs))
    (tmp_path / "model").mkdir()
    keras.Model(inputs, outputs).save(tmp_path / "model" / "model.keras")
    (tmp_path / "model" / "classes.json").write_text('{"names": ["c0","c1","c2","c3","c4","c5","c6","c7","c8","c9"]}')
    odd = os.fsencode(tmp_path) + b"/caf\xe9.npy"
    np.save(os.fsdecode(odd), np.zeros((1000, 32, 32, 3), np.uint8))
    env = {**os.environ, "PYTHONIOENCODING": "utf-8:strict", "PYTHONPATH": str(Path(__file__).parents[1] / "src")}
    command = [sys.executable, "-m", "cifar_pipeline.inference.predict", str(tmp_path / "model"), os.fsdecode(odd)]
    shown = subprocess.run(command, env=env, capture_output=True, timeout=120)
    assert shown.returncode == 0 and b"Traceback" not in shown.stderr, shown.stderr[-2000:]
    assert b"caf\\udce9.npy[999]" in shown.stdout
    with subprocess.Popen(command, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE) as piped:  # `| head -1`
        first = piped.stdout.readline()
        piped.stdout.close()
        errors = piped.stderr.read()
    assert first.startswith(b"input") and b"Traceback" not in errors, errors[-2000:]
