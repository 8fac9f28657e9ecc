import numpy as np
import pytest

from cifar_pipeline.core.datasets import CIFAR10, CIFAR100, DataFormatError, parse_records
from testkit.archives import class_images, encode_records


@pytest.mark.parametrize("spec", [CIFAR10, CIFAR100], ids=lambda s: s.name)
def test_parse_records_round_trips_images_and_every_label_field(spec):
    rng = np.random.default_rng(1)
    labels = {field: rng.integers(0, spec.num_classes[field], 7) for field in spec.label_fields}
    images = class_images(labels[spec.label_fields[-1]], rng)
    raw = encode_records(images, [labels[f] for f in spec.label_fields])

    parsed, parsed_labels = parse_records(raw, spec, "batch")

    assert parsed.dtype == np.uint8 and parsed.shape == (7, 32, 32, 3)
    np.testing.assert_array_equal(parsed, images)
    for field in spec.label_fields:
        np.testing.assert_array_equal(parsed_labels[field], labels[field])


def test_record_layout_is_label_then_planar_red_green_blue():
    record = np.zeros(3073, dtype=np.uint8)
    record[0] = 3
    record[1:1025] = 10  # red plane
    record[1025:2049] = 20  # green plane
    record[2049] = 30  # first blue pixel: top-left
    images, labels = parse_records(record.tobytes(), CIFAR10, "one")
    assert labels["label"].tolist() == [3]
    assert images[0, 0, 0].tolist() == [10, 20, 30]
    assert images[0, 0, 1].tolist() == [10, 20, 0]


def test_cifar100_coarse_label_comes_first():
    record = np.zeros(3074, dtype=np.uint8)
    record[:2] = [19, 99]
    _, labels = parse_records(record.tobytes(), CIFAR100, "one")
    assert labels == {"coarse": [19], "fine": [99]}


def test_size_not_a_whole_number_of_records_is_an_error():
    with pytest.raises(DataFormatError, match="not a whole number of cifar10 records"):
        parse_records(b"\x00" * (3073 * 2 + 5), CIFAR10, "data_batch_1.bin")


def test_label_out_of_range_is_an_error():
    record = np.zeros(3073, dtype=np.uint8)
    record[0] = 10
    with pytest.raises(DataFormatError, match="label 10, but cifar10 has only 10"):
        parse_records(record.tobytes(), CIFAR10, "batch")
