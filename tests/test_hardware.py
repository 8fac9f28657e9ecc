import pytest

from cifar_pipeline.training import hardware


@pytest.mark.parametrize(
    ("gpu", "bf16_cpu", "setting", "policy"),
    [
        (False, False, "auto", "float32"),
        (False, True, "auto", "mixed_bfloat16"),
        (False, False, True, "mixed_bfloat16"),
        (False, True, False, "float32"),
        (True, False, "auto", "mixed_float16"),
        (True, True, "auto", "mixed_float16"),
        (True, False, True, "mixed_float16"),
        (True, False, False, "float32"),
        (False, False, "float16", "mixed_float16"),  # the GPU's dtype named on a CPU: the tests' GPU path
        (True, False, "bfloat16", "mixed_bfloat16"),  # a GPU asked for bfloat16 (no loss scaling)
    ],
)
def test_precision_policy_follows_the_hardware(monkeypatch, gpu, bf16_cpu, setting, policy):
    monkeypatch.setattr(hardware, "has_gpu", lambda: gpu)
    monkeypatch.setattr(hardware, "cpu_has_fast_bfloat16", lambda: bf16_cpu)
    assert hardware.precision_policy(setting) == policy


@pytest.mark.parametrize(
    ("cpuinfo", "fast"),
    [
        ("processor\t: 0\nflags\t\t: fpu sse avx2 fma\n", False),
        ("processor\t: 0\nflags\t\t: fpu avx2 avx512f avx512_bf16 avx512_vnni\n", True),
        ("processor\t: 0\nflags\t\t: avx512f amx_bf16 amx_tile\n", True),
        ("processor\t: 0\nFeatures\t: fp asimd sve\n", False),  # aarch64 spelling, no bf16 path here
    ],
)
def test_cpu_flags_decide_fast_bfloat16(monkeypatch, tmp_path, cpuinfo, fast):
    (tmp_path / "cpuinfo").write_text(cpuinfo)
    read = hardware.cpu_flags
    monkeypatch.setattr(hardware, "cpu_flags", lambda: read(tmp_path / "cpuinfo"))
    assert hardware.cpu_has_fast_bfloat16() is fast


def test_no_cpuinfo_means_no_flags(tmp_path):
    assert hardware.cpu_flags(tmp_path / "missing") == frozenset()
