import pytest

from cifar_pipeline import hardware


@pytest.mark.parametrize(
    ("gpu", "setting", "policy"),
    [
        (False, "auto", "float32"),
        (False, True, "mixed_bfloat16"),
        (False, False, "float32"),
        (True, "auto", "mixed_float16"),
        (True, True, "mixed_float16"),
        (True, False, "float32"),
    ],
)
def test_precision_policy_follows_the_hardware(monkeypatch, gpu, setting, policy):
    monkeypatch.setattr(hardware, "has_gpu", lambda: gpu)
    assert hardware.precision_policy(setting) == policy
