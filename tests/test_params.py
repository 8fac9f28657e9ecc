import copy
from pathlib import Path

import pytest
import yaml

from cifar_pipeline.core.params import ParamsError, flatten, load_params, parse_params
from testkit.project import seed_params

PROJECT_PARAMS = Path(__file__).resolve().parents[1] / "params.yaml"


@pytest.fixture
def raw():
    """The project's params with the seed recipe (the values these tests check)."""
    return yaml.safe_load(PROJECT_PARAMS.read_text()) | {"recipe": "seed"}


def test_project_params_are_valid_and_the_seed_recipe_is_the_seeds():
    assert load_params(PROJECT_PARAMS).datasets == ("cifar10", "cifar100")
    params = seed_params()
    assert params.datasets == ("cifar10", "cifar100")
    assert params.data["cifar100"].label_mode == "fine"
    assert params.data["cifar10"].md5 == "c32a1d4ab5d03f1284b67883e8d87530"
    assert params.data["cifar100"].md5 == "03b5dce01913d631647c71ecec9e9cb8"
    assert params.split.val_fraction == 0.1
    train = params.train
    assert (train.epochs, train.batch_size, train.learning_rate) == (200, 128, 0.005)
    assert train.model.filters == (32, 64, 128, 256)
    assert train.model.dropouts == (0.25, 0.35, 0.45, 0.35)
    assert train.model.dense_units == 1024
    assert (train.augment.flip, train.augment.shift) == (True, 4)
    assert (train.optimizer, train.learning_rate, train.weight_decay, train.label_smoothing) == ("adam", 0.005, 0, 0)
    # The seed's schedule never fired; the fix decays over whatever train.epochs is.
    assert (train.lr_schedule.kind, train.lr_schedule.warmup_fraction) == ("cosine", 0.15)


def _with(raw, path, value):
    changed = copy.deepcopy(raw)
    node = changed
    keys = path.split(".")
    for key in keys[:-1]:
        node = node[key]
    if value is KeyError:
        del node[keys[-1]]
    else:
        node[keys[-1]] = value
    return changed


@pytest.mark.parametrize(
    ("path", "value", "message"),
    [
        ("train.epoch", 3, r"unknown key 'train.epoch' \(did you mean 'train.epochs'\?\)"),
        ("split.val_fraction", 1.5, r"split.val_fraction must be between 0 and 1"),
        ("split.val_fraction", 0, r"split.val_fraction must be between 0 and 1"),
        ("split.val_fraction", "ten", r"split.val_fraction must be a number, got 'ten'"),
        ("train.epochs", 0, r"train.epochs must be an integer >= 1, got 0"),
        ("train.epochs", -3, r"train.epochs must be an integer >= 1, got -3"),
        ("train.epochs", "5", r"train.epochs must be an integer, got '5'"),
        ("train.batch_size", 0, r"train.batch_size must be an integer >= 1"),
        ("train.batch_size", 12.5, r"train.batch_size must be an integer, got 12.5"),
        ("train.augment.flip", "yes", r"train.augment.flip must be true or false"),
        ("datasets", ["cifar10", "cifar1000"], r"unknown dataset 'cifar1000' \(did you mean 'cifar100'\?\)"),
        ("datasets", [], r"'datasets' must be a non-empty list"),
        ("datasets", ["cifar10", "cifar10"], r"lists a dataset twice"),
        (
            "data.cifar100.label_mode",
            "medium",
            r"data.cifar100.label_mode must be one of \['coarse', 'fine'\], got 'medium'",
        ),
        ("data.cifar10.label_mode", "fine", r"data.cifar10.label_mode must be one of \['label'\], got 'fine'"),
        ("data.cifar10.md5", "abc", r"data.cifar10.md5 must be 32 hexadecimal digits"),
        ("data.cifar10", KeyError, r"missing key 'data.cifar10'"),
        (
            "train.lr_schedule.kind",
            "cosin",
            r"train.lr_schedule.kind must be one of \['step', 'constant', 'cosine', 'triangular'\], got 'cosin' "
            r"\(did you mean 'cosine'\?\)",
        ),
        (
            "train.lr_schedule.kind",
            "constant",
            r"train.lr_schedule.warmup_fraction is 0.15, but only the cosine and triangular schedules warm up; "
            r"set train.lr_schedule.kind to one of them, or warmup_fraction to 0",
        ),
        ("train.lr_schedule.warmup_fraction", 1, r"warmup_fraction must be at least 0 and below 1, got 1"),
        ("train.optimizer", "rmsprop", r"train.optimizer must be one of \['adam', 'adamw', 'sgd', 'muon'\]"),
        ("train.weight_decay", 0.0005, r"adam has no decoupled weight decay; set train.optimizer to adamw"),
        ("train.weight_decay", -0.1, r"train.weight_decay must be at least 0 and below 1, got -0.1"),
        ("train.momentum", 1.0, r"train.momentum must be at least 0 and below 1, got 1.0"),
        ("train.label_smoothing", "0.1", r"train.label_smoothing must be a number, got '0.1'"),
        ("train.label_smoothing", 1, r"train.label_smoothing must be at least 0 and below 1, got 1"),
        ("train.lr_schedule.boundaries", [100, 50], r"strictly increasing"),
        ("train.model.dropouts", [0.1], r"one rate per block \(4\)"),
        ("train.model.filters", [8] * 6, r"at most 5 fit"),
        ("train.learning_rate", -1, r"train.learning_rate must be > 0"),
        ("train.jit_compile", "yes", r"train.jit_compile must be auto, true or false, got 'yes'"),
        ("train.mixed_precision", 1, r"train.mixed_precision must be auto, true, false, float16 or bfloat16, got 1"),
        ("split.max_train_images", 1, r"split.max_train_images must be an integer >= 2"),
        ("split.max_train_images", 5, r"max_train_images is 5, but cifar10 \(10 classes\) .* needs at least 95"),
        ("split.max_train_images", 10, r"needs at least 95 for one training and one validation image per class"),
        ("split.max_train_images", 500, r"cifar100 \(100 classes\) with split.val_fraction 0.1 needs at least 995"),
        ("train.seed", 2**32, r"train.seed must be an integer between 0 and 4294967295, got 4294967296"),
        (
            "train.model.dense_units",
            10**9,
            r"train.model has 1,035,001,176,106 weights \(4140.0 GB in float32.*the limit is 100,000,000",
        ),
        ("train.model.filters", [4096, 4096, 4096, 4096], r"the limit is 100,000,000: lower"),
        (
            "train.model.kind",
            "airbnch",
            r"train.model.kind must be one of \['seed', 'airbench'\], got 'airbnch' \(did you mean 'airbench'\?\)",
        ),
        ("train.model.widths", [64, 256], r"train.model.widths must list the airbench network's 3 group widths"),
        ("train.model.widths", [64, 0, 256], r"train.model.widths\[1\] must be an integer >= 1, got 0"),
        ("train.model.bn_momentum", 1.0, r"train.model.bn_momentum must be at least 0 and below 1, got 1.0"),
        ("train.model.bn_scale", "no", r"train.model.bn_scale must be true or false, got 'no'"),
        (
            "train.model.test_views",
            "tta",
            r"train.model.test_views must be one of \['none', 'flip', 'flip_translate'\]",
        ),
        ("train.augment.fill", "wrap", r"train.augment.fill must be one of \['mean', 'reflect'\], got 'wrap'"),
        ("train.ema_momentum", 0, r"train.ema_momentum is 0, which averages nothing; set null"),
        ("train.ema_momentum", 1.0, r"train.ema_momentum must be at least 0 and below 1, got 1.0"),
        ("train.ema_momentum", "0.9", r"train.ema_momentum must be a number, got '0.9'"),
    ],
)
def test_bad_values_name_the_key_and_what_is_allowed(raw, path, value, message):
    with pytest.raises(ParamsError, match=message):
        parse_params(_with(raw, path, value))


@pytest.mark.parametrize(
    ("url", "secret"),
    [
        ("https://reader:tok3n@mirror.example.org/c.tar.gz", "a login"),
        ("https://tok3n@mirror.example.org/c.tar.gz", "a login"),
        ("https://mirror.example.org/c.tar.gz?access_token=tok3n", "parameter `access_token`"),
        ("https://bucket.s3.amazonaws.com/c.tar.gz?X-Amz-Credential=a&X-Amz-Signature=tok3n", "X-Amz-Credential"),
        ("https://storage.googleapis.com/b/c.tar.gz?X-Goog-Signature=tok3n", "parameter `X-Goog-Signature`"),
        ("https://acct.blob.core.windows.net/c/c.tar.gz?sv=2024&sig=tok3n", "parameter `sig`"),
    ],
)
def test_a_data_url_holding_a_secret_is_refused_without_quoting_it(raw, url, secret):
    """params.yaml's URL goes into dvc.lock, DVC's run cache and git, where masking is too late."""
    with pytest.raises(ParamsError, match=r"params.yaml: data.cifar10.url holds ") as refused:
        parse_params(_with(raw, "data.cifar10.url", url))
    assert secret in str(refused.value) and "tok3n" not in str(refused.value)
    assert "~/.netrc" in str(refused.value) and len(str(refused.value).splitlines()) == 1


def test_a_data_url_with_a_harmless_query_is_kept(raw):
    url = "https://mirror.example.org/c.tar.gz?version=2&format=tar"
    assert parse_params(_with(raw, "data.cifar10.url", url)).dataset("cifar10").url == url


def test_recipe_knobs_parse(raw):
    changed = raw
    for path, value in [
        ("train.optimizer", "sgd"),
        ("train.weight_decay", 0.0005),
        ("train.momentum", 0.8),
        ("train.label_smoothing", 0.1),
        ("train.lr_schedule.kind", "cosine"),
        ("train.lr_schedule.warmup_fraction", 0.2),
    ]:
        changed = _with(changed, path, value)
    train = parse_params(changed).train
    assert (train.optimizer, train.weight_decay, train.momentum, train.label_smoothing) == ("sgd", 0.0005, 0.8, 0.1)
    assert (train.lr_schedule.kind, train.lr_schedule.warmup_fraction) == ("cosine", 0.2)


def test_a_dataset_section_may_stay_when_the_dataset_is_not_listed(raw):
    params = parse_params(_with(raw, "datasets", ["cifar10"]))
    assert params.datasets == ("cifar10",)
    with pytest.raises(ParamsError, match="'cifar100' is not in 'datasets'"):
        params.dataset("cifar100")


def test_malformed_yaml_names_the_line(tmp_path):
    path = tmp_path / "params.yaml"
    path.write_text("train:\n  epochs: [1,\n  batch_size: 3\n")
    with pytest.raises(ParamsError, match=r"not valid YAML at line \d+"):
        load_params(path)


def _alias_bomb(levels: int = 9) -> str:
    """Nine anchors of nine aliases each: 390 bytes that expand to 9^9 values."""
    lines = ["a0: &a0 [x, x, x, x, x, x, x, x, x]"]
    lines += [f"a{i}: &a{i} [{', '.join([f'*a{i - 1}'] * 9)}]" for i in range(1, levels)]
    return "\n".join(lines) + "\n"


@pytest.mark.parametrize(
    ("content", "message"),
    [
        (_alias_bomb().encode(), r"expands to more than 100,000 values \(anchors and aliases"),
        (b"a: " + b"[" * 5000 + b"]" * 5000 + b"\n", "nests deeper than 64 levels"),
        (b"a: " + b"[" * 70 + b"]" * 70 + b"\n", "nests deeper than 64 levels"),
        ("train: {seed: 'caf\xe9'}\n".encode("latin-1"), r"is not UTF-8 text \(byte 0xe9 at offset 18\)"),
        (b"# " + b"x" * (1 << 20) + b"\n", "over the 1,048,576 a params file may hold"),
    ],
    ids=["alias-bomb", "deep", "deep-short", "latin-1", "huge"],
)
def test_pathological_yaml_is_one_line_in_bounded_time_and_memory(tmp_path, content, message):
    path = tmp_path / "params.yaml"
    path.write_bytes(content)
    with pytest.raises(ParamsError, match=message):
        load_params(path)


def test_missing_file(tmp_path):
    with pytest.raises(ParamsError, match="not found"):
        load_params(tmp_path / "params.yaml")


def test_top_level_must_be_a_mapping():
    with pytest.raises(ParamsError, match="the top level must be a mapping"):
        parse_params(["datasets"])


def test_flatten_gives_dotted_keys_with_lists():
    flat = flatten(seed_params().train, "train.")
    assert flat["train.model.filters"] == [32, 64, 128, 256]
    assert flat["train.lr_schedule.kind"] == "cosine"
    assert flat["train.epochs"] == 200


def test_params_are_read_with_the_yaml_rules_dvc_uses(tmp_path):
    """PyYAML (YAML 1.1) reads 1e-3 as a string; DVC (ruamel.yaml, YAML 1.2) as 0.001."""
    text = PROJECT_PARAMS.read_text().replace("learning_rate: recipe", "learning_rate: 1e-3")
    assert "learning_rate: 1e-3" in text
    (tmp_path / "params.yaml").write_text(text)
    (tmp_path / "recipes.yaml").write_text((PROJECT_PARAMS.parent / "recipes.yaml").read_text())
    assert load_params(tmp_path / "params.yaml").train.learning_rate == 0.001


@pytest.mark.parametrize(
    "change",
    [
        {},
        {"kind": "airbench"},
        {"kind": "airbench", "bn_scale": False, "widths": (8, 16, 32)},
        {"kind": "airbench", "whiten_bias_epochs": 3},
    ],
)
def test_model_weights_estimate_matches_keras(change):
    import dataclasses

    from cifar_pipeline.core.model_size import model_weights
    from cifar_pipeline.data.channel_stats import ChannelStats
    from cifar_pipeline.training.model import build_classifier

    model = dataclasses.replace(seed_params().train.model, **change)
    stats = ChannelStats(mean=(0.0,) * 3, std=(1.0,) * 3)
    for classes in (10, 100):
        assert model_weights(model, classes) == build_classifier(model, classes, stats).count_params()


def test_the_fast_network_and_its_tricks_parse(raw):
    changed = raw
    for path, value in [
        ("train.model.kind", "airbench"),
        ("train.model.widths", [32, 64, 64]),
        ("train.model.bn_momentum", 0.6),
        ("train.model.bn_scale", False),
        ("train.model.test_views", "flip_translate"),
        ("train.augment.fill", "reflect"),
        ("train.ema_momentum", 0.9),
        ("train.lr_schedule.kind", "triangular"),
    ]:
        changed = _with(changed, path, value)
    train = parse_params(changed).train
    assert (train.model.kind, train.model.widths, train.model.bn_momentum) == ("airbench", (32, 64, 64), 0.6)
    assert (train.model.bn_scale, train.model.test_views, train.augment.fill) == (False, "flip_translate", "reflect")
    assert (train.ema_momentum, train.lr_schedule.kind) == (0.9, "triangular")


def test_the_default_network_is_the_seeds_with_keras_defaults():
    train = seed_params().train
    assert (train.model.kind, train.model.bn_momentum, train.model.bn_scale) == ("seed", 0.99, True)
    assert (train.model.test_views, train.augment.fill, train.ema_momentum) == ("none", "mean", None)


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"lookahead": True, "ema_momentum": 0.9}, "train.lookahead and train.ema_momentum are both set"),
        ({"bn_bias_lr_scale": 64.0, "optimizer": "adamw"}, "train.bn_bias_lr_scale is 64.0, but only sgd"),
        (
            {"deterministic": True, "mixed_precision": True},
            "train.deterministic is true, but train.mixed_precision is true; repeatable runs compute in float32",
        ),
        (
            {"deterministic": True, "mixed_precision": "float16"},
            "train.deterministic is true, but train.mixed_precision is float16; repeatable runs compute in float32",
        ),
    ],
)
def test_airbench_pieces_that_cannot_go_together_are_refused_in_one_line(raw, change, message):
    changed = raw
    for key, value in change.items():
        changed = _with(changed, f"train.{key}", value)
    with pytest.raises(ParamsError, match=message):
        parse_params(changed)
