import gzip
import tarfile

import numpy as np
import pytest

from cifar_pipeline.core.datasets import CIFAR10, CIFAR100, DataFormatError
from cifar_pipeline.data.archive import read_archive
from testkit.archives import build_archive


@pytest.mark.parametrize(
    ("spec", "n_train", "n_test"), [(CIFAR10, 5 * 12, 12), (CIFAR100, 30, 12)], ids=["cifar10", "cifar100"]
)
def test_reads_every_batch_and_the_label_names(tmp_path, spec, n_train, n_test):
    path = tmp_path / "a.tar.gz"
    build_archive(path, spec.name, train_per_file=n_train // len(spec.train_files), test=n_test)
    raw = read_archive(path, spec)
    assert raw.train_images.shape == (n_train, 32, 32, 3)
    assert raw.test_images.shape == (n_test, 32, 32, 3)
    assert set(raw.train_labels) == set(spec.label_fields)
    for field in spec.label_fields:
        assert len(raw.class_names[field]) == spec.num_classes[field]
        assert raw.class_names[field][1] == f"{field}_1"


def test_record_count_comes_from_file_size(tmp_path):
    path = tmp_path / "a.tar.gz"
    build_archive(path, "cifar10", train_per_file=7, test=3)
    assert len(read_archive(path, CIFAR10).train_images) == 35


def _member(name, kind, **extra):
    member = tarfile.TarInfo(name)
    member.type = kind
    for key, value in extra.items():
        setattr(member, key, value)
    return member


@pytest.mark.parametrize(
    ("member", "message"),
    [
        (_member("../escape.bin", tarfile.REGTYPE, size=4), "outside the output folder"),
        (_member("cifar-10-batches-bin/../../escape.bin", tarfile.REGTYPE, size=4), "outside the output folder"),
        (_member("/etc/evil", tarfile.REGTYPE, size=4), "outside the output folder"),
        (_member("cifar-10-batches-bin/link", tarfile.SYMTYPE, linkname="/etc/passwd"), "is a link"),
        (
            _member("cifar-10-batches-bin/hard", tarfile.LNKTYPE, linkname="cifar-10-batches-bin/test_batch.bin"),
            "is a link",
        ),
        (_member("cifar-10-batches-bin/dev", tarfile.CHRTYPE, devmajor=1, devminor=3), "special file"),
        (_member("cifar-10-batches-bin/fifo", tarfile.FIFOTYPE), "special file"),
    ],
    ids=["dotdot", "nested-dotdot", "absolute", "symlink", "hardlink", "device", "fifo"],
)
def test_unsafe_members_refuse_the_whole_archive(tmp_path, member, message):
    path = tmp_path / "a.tar.gz"
    build_archive(path, "cifar10", train_per_file=2, test=2, extra=[member])
    with pytest.raises(DataFormatError, match=message):
        read_archive(path, CIFAR10)
    assert list(tmp_path.iterdir()) == [path]  # nothing was extracted anywhere


def test_truncated_gzip(tmp_path):
    path = tmp_path / "a.tar.gz"
    build_archive(path, "cifar10", train_per_file=20, test=20)
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    with pytest.raises(DataFormatError, match="not a readable .tar.gz"):
        read_archive(path, CIFAR10)


@pytest.mark.parametrize(
    "content", [b"<html>not found</html>", gzip.compress(b"plain text, not a tar")], ids=["not-gzip", "gzip-not-tar"]
)
def test_not_a_tar_gz(tmp_path, content):
    path = tmp_path / "a.tar.gz"
    path.write_bytes(content)
    with pytest.raises(DataFormatError, match="not a readable .tar.gz"):
        read_archive(path, CIFAR10)


def test_missing_batch_file(tmp_path):
    path = tmp_path / "a.tar.gz"
    build_archive(path, "cifar10", train_per_file=2, test=2, override={"data_batch_3.bin": None})
    with pytest.raises(DataFormatError, match="data_batch_3.bin is missing"):
        read_archive(path, CIFAR10)


def test_truncated_batch_file(tmp_path):
    path = tmp_path / "a.tar.gz"
    build_archive(
        path, "cifar100", train_per_file=2, test=2, override={"test.bin": np.zeros(3074 * 2 - 1, np.uint8).tobytes()}
    )
    with pytest.raises(DataFormatError, match="test.bin: 6147 bytes is not a whole number"):
        read_archive(path, CIFAR100)


def test_label_out_of_range_in_archive(tmp_path):
    bad = np.zeros(3074, np.uint8)
    bad[1] = 100  # fine label 100 of 0..99
    path = tmp_path / "a.tar.gz"
    build_archive(path, "cifar100", train_per_file=2, test=2, override={"train.bin": bad.tobytes()})
    with pytest.raises(DataFormatError, match="fine label 100"):
        read_archive(path, CIFAR100)


def _claiming(tmp_path, name: str, size: int):
    """A .tar.gz of a few kB whose member header claims `size` bytes: what a zip bomb looks like to the reader."""
    header = tarfile.TarInfo(name)
    header.size = size
    path = tmp_path / "bomb.tar.gz"
    path.write_bytes(gzip.compress(header.tobuf() + bytes(4096)))
    return path


@pytest.mark.parametrize(
    ("name", "size", "limit"),
    [
        ("cifar-10-batches-bin/data_batch_1.bin", 4 << 30, "30,730,000"),  # 4 GiB of zeros, 33 MB gzipped
        ("cifar-10-batches-bin/data_batch_1.bin", 10_001 * 3073, "30,730,000"),  # one record too many
        ("cifar-10-batches-bin/batches.meta.txt", 1 << 20, "65,536"),
        ("cifar-10-batches-bin/readme.html", 31 << 20, "30,730,000"),  # skipped members are inflated too
    ],
)
def test_a_member_bigger_than_the_official_one_is_refused_before_it_is_read(tmp_path, name, size, limit):
    with pytest.raises(DataFormatError, match=rf"is {size:,} bytes, more than the official cifar10 archive's {limit}"):
        read_archive(_claiming(tmp_path, name, size), CIFAR10)


def test_an_archive_of_too_many_members_is_refused(tmp_path):
    extra = [_member(f"cifar-10-batches-bin/x{i}", tarfile.DIRTYPE) for i in range(70)]
    path = tmp_path / "a.tar.gz"
    build_archive(path, "cifar10", train_per_file=2, test=2, extra=extra)
    with pytest.raises(DataFormatError, match="holds more than 64 members"):
        read_archive(path, CIFAR10)


def test_the_official_counts_are_accepted():
    assert CIFAR10.max_bytes("data_batch_5.bin") == 10_000 * 3073 and CIFAR100.max_bytes("train.bin") == 50_000 * 3074
