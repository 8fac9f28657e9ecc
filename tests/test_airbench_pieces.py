"""airbench's pieces as params: identity start, per-variable rates, the whitening bias,
Lookahead and Muon on conv kernels, each checked against what it must do on tiny models."""

import dataclasses

import keras
import numpy as np

from cifar_pipeline.data.channel_stats import ChannelStats
from cifar_pipeline.training.lookahead import BASE_DECAY, EVERY, Lookahead
from cifar_pipeline.training.model import build_classifier, dirac_initialise, set_whitening
from cifar_pipeline.training.optimizers import ConvMuon, VariableRateSGD
from cifar_pipeline.training.recipe import build_optimizer
from testkit.project import seed_params

STATS = ChannelStats(mean=(120.0,) * 3, std=(60.0,) * 3)
IMAGES = np.random.default_rng(0).integers(0, 256, (64, 32, 32, 3), dtype=np.uint8)
LABELS = np.arange(64) % 10


def tiny_settings(**train):
    """The fast recipe's network, narrow, with `train` (and `model=...`) changes."""
    settings = seed_params().train
    model = dataclasses.replace(
        settings.model, kind="airbench", widths=(8, 16, 16), bn_scale=False, **train.pop("model", {})
    )
    schedule = dataclasses.replace(settings.lr_schedule, kind="constant", warmup_fraction=0.0)
    base = {"optimizer": "sgd", "learning_rate": 0.1, "momentum": 0.0, "weight_decay": 0.0, "batch_size": 16}
    return dataclasses.replace(settings, model=model, lr_schedule=schedule, **(base | train))


def model_for(settings):
    model = build_classifier(settings.model, 10, STATS)
    set_whitening(model, IMAGES, STATS)
    return model


def test_dirac_start_passes_each_conv_input_channel_through_and_keeps_the_other_filters():
    model = model_for(tiny_settings())
    before = {
        layer.name: layer.get_weights()[0]
        for layer in model.layers
        if layer.name.startswith("group") and isinstance(layer, keras.layers.Conv2D)
    }
    dirac_initialise(model)
    assert set(before) == {f"group{g}_conv{c}" for g in (1, 2, 3) for c in (1, 2)}
    for name, old in before.items():
        kernel = model.get_layer(name).get_weights()[0]
        shared = min(kernel.shape[2], kernel.shape[3])
        identity = np.zeros((*kernel.shape[:3], shared), np.float32)
        identity[1, 1, np.arange(shared), np.arange(shared)] = 1.0
        np.testing.assert_array_equal(kernel[..., :shared], identity)
        np.testing.assert_array_equal(kernel[..., shared:], old[..., shared:])


def one_step(optimizer, model, gradient_value=1.0):
    """Apply a gradient of `gradient_value` everywhere; return each variable's change by path."""
    before = {v.path: keras.ops.convert_to_numpy(v).copy() for v in model.trainable_variables}
    grads = [keras.ops.full(v.shape, gradient_value) for v in model.trainable_variables]
    optimizer.apply(grads, model.trainable_variables)
    return {v.path: keras.ops.convert_to_numpy(v) - before[v.path] for v in model.trainable_variables}


def test_batchnorm_biases_take_exactly_the_scaled_rate_and_the_others_the_plain_one():
    settings = tiny_settings(bn_bias_lr_scale=64.0)
    model = model_for(settings)
    change = one_step(build_optimizer(settings, steps_per_epoch=4), model)
    betas = [path for path in change if path.endswith("/beta")]
    assert betas and all("_bn" in path for path in betas)
    plain = change["group1_conv1/kernel"].flat[0]
    np.testing.assert_allclose(plain, -0.1, rtol=1e-6)
    for path in betas:
        np.testing.assert_allclose(change[path], 64.0 * plain, rtol=1e-5)


def test_the_whitening_kernel_never_moves_and_its_bias_stops_after_its_epochs():
    settings = tiny_settings(model={"whiten_bias_epochs": 2}, weight_decay=0.01)
    model = model_for(settings)
    optimizer = build_optimizer(settings, steps_per_epoch=3)  # frozen from step 6
    kernel = model.get_layer("whiten").get_weights()[0].copy()
    moved = []
    for _ in range(8):
        change = one_step(optimizer, model)
        moved.append(bool(np.any(change["whiten/bias"])))
        np.testing.assert_array_equal(change["whiten/kernel"], 0.0)  # no gradient step, no weight decay
    # with momentum 0 it stops at once
    assert moved == [True] * 6 + [False] * 2
    np.testing.assert_array_equal(model.get_layer("whiten").get_weights()[0], kernel)


def test_the_rules_are_saved_with_the_optimizer_so_a_resumed_run_keeps_them():
    settings = tiny_settings(bn_bias_lr_scale=64.0, model={"whiten_bias_epochs": 3})
    optimizer = build_optimizer(settings, steps_per_epoch=10)
    restored = keras.saving.deserialize_keras_object(keras.saving.serialize_keras_object(optimizer))
    assert isinstance(restored, VariableRateSGD)
    assert restored.rate_scales == {r"_bn\d/beta$": 64.0}
    assert restored.frozen_from == {"^whiten/kernel$": 0, "^whiten/bias$": 30}


def test_muon_orthogonalises_conv_kernels_and_leaves_biases_and_the_head_to_adamw():
    settings = tiny_settings(optimizer="muon", learning_rate=0.02, momentum=0.9)
    model = model_for(settings)
    optimizer = build_optimizer(settings, steps_per_epoch=1)
    assert isinstance(optimizer, ConvMuon)
    optimizer.build(model.trainable_variables)
    paths = {v.path: optimizer._should_use_adamw(v) for v in model.trainable_variables}
    assert paths["group2_conv1/kernel"] is False and paths["head/kernel"] is True
    assert all(paths[p] for p in paths if p.endswith("/beta"))
    rng = np.random.default_rng(1)
    grads = [keras.ops.convert_to_tensor(rng.normal(size=v.shape).astype("float32")) for v in model.trainable_variables]
    kernel = model.get_layer("group2_conv1").kernel
    before = keras.ops.convert_to_numpy(kernel).copy()
    optimizer.apply(grads, model.trainable_variables)
    update = (before - keras.ops.convert_to_numpy(kernel)).reshape(-1, kernel.shape[-1])
    singular = np.linalg.svd(update, compute_uv=False)
    # Newton-Schulz's quintic pushes every singular value into about [0.7, 1.2] of one scale
    assert singular.max() / singular.min() < 2.0


def test_lookahead_pulls_the_weights_to_the_slow_copy_every_five_steps():
    model = keras.Sequential([keras.Input((2,)), keras.layers.Dense(1, use_bias=False)])
    model.compile(optimizer=keras.optimizers.SGD(0.1), loss="mse")
    callback = Lookahead(total_steps=10)
    callback.set_model(model)
    model.layers[0].kernel.assign(np.zeros((2, 1), np.float32))
    callback.on_train_begin()
    model.layers[0].kernel.assign(np.ones((2, 1), np.float32))  # the fast weights moved by 1
    model.optimizer.iterations.assign(EVERY)
    callback.on_train_batch_end(0)
    decay = BASE_DECAY * (EVERY / 10) ** 3
    np.testing.assert_allclose(keras.ops.convert_to_numpy(model.layers[0].kernel), 1.0 - decay, rtol=1e-6)
    model.layers[0].kernel.assign(np.full((2, 1), 5.0, np.float32))
    model.optimizer.iterations.assign(EVERY + 1)
    callback.on_train_batch_end(1)  # not a fifth step: nothing happens
    assert keras.ops.convert_to_numpy(model.layers[0].kernel)[0, 0] == 5.0
    callback.on_train_end()  # the run ends on the slow weights
    np.testing.assert_allclose(keras.ops.convert_to_numpy(model.layers[0].kernel), 1.0 - decay, rtol=1e-6)


def test_a_fit_with_every_piece_trains_and_its_exported_model_reloads_the_same(tmp_path):
    from cifar_pipeline.training.final_model import build_final_model
    from cifar_pipeline.training.trainer import fit_classifier, new_classifier

    settings = tiny_settings(
        epochs=2,
        lookahead=True,
        bn_bias_lr_scale=64.0,
        momentum=0.85,
        weight_decay=5e-4,
        model={"dirac_init": True, "whiten_bias_epochs": 1, "test_views": "flip_translate"},
    )
    classifier = new_classifier(settings, 10, STATS, IMAGES)
    history = fit_classifier(classifier, settings, (IMAGES, LABELS), (IMAGES[:16], LABELS[:16]), STATS)
    assert np.all(np.isfinite(history.history["loss"]))
    model = build_final_model(classifier, settings, (IMAGES, LABELS), STATS)
    model.save(tmp_path / "model.keras")
    reloaded = keras.saving.load_model(tmp_path / "model.keras")
    np.testing.assert_allclose(reloaded.predict(IMAGES[:4], verbose=0), model.predict(IMAGES[:4], verbose=0), atol=1e-6)


def test_a_checkpoint_keeps_the_optimizer_with_its_rules_and_state(tmp_path):
    """What a resumed run loads (`Checkpoints` saves `.keras` files with the optimizer)."""
    from cifar_pipeline.training.trainer import fit_classifier, new_classifier

    settings = tiny_settings(epochs=1, bn_bias_lr_scale=64.0, momentum=0.85, model={"whiten_bias_epochs": 1})
    classifier = new_classifier(settings, 10, STATS, IMAGES)
    fit_classifier(classifier, settings, (IMAGES, LABELS), (IMAGES[:16], LABELS[:16]), STATS)
    classifier.save(tmp_path / "epoch-0001.keras")
    restored = keras.models.load_model(tmp_path / "epoch-0001.keras")
    assert isinstance(restored.optimizer, VariableRateSGD)
    assert restored.optimizer.rate_scales == classifier.optimizer.rate_scales
    assert restored.optimizer.frozen_from == {"^whiten/kernel$": 0, "^whiten/bias$": 4}
    assert int(restored.optimizer.iterations) == int(classifier.optimizer.iterations) == 4
    for saved, loaded in zip(classifier.optimizer.variables, restored.optimizer.variables, strict=True):
        np.testing.assert_array_equal(keras.ops.convert_to_numpy(saved), keras.ops.convert_to_numpy(loaded))
