"""The train stage: fit the classifier, log every epoch to MLflow, save and log the model."""

from __future__ import annotations

import contextlib
import hashlib
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import keras
import mlflow
import numpy as np
import tensorflow as tf

from cifar_pipeline.core import sweep_trial
from cifar_pipeline.core.files import atomic_dir, write_csv, write_json
from cifar_pipeline.core.layout import CLASSES_FILE, MODEL_FILE, RUN_FILE, Split, load_split
from cifar_pipeline.core.metric_names import ACCURACY_KEYS, LOSS_KEYS
from cifar_pipeline.core.params import Params, TrainParams
from cifar_pipeline.core.run_identity import recorded_params
from cifar_pipeline.data.channel_stats import ChannelStats
from cifar_pipeline.tracking import mlflow_datasets, mlflow_runs, mlflow_store
from cifar_pipeline.tracking.figures import training_curves
from cifar_pipeline.tracking.logged_model import log_model
from cifar_pipeline.training.callbacks import EpochLogger, StopWhenInterrupted, diverged
from cifar_pipeline.training.checkpoint import CheckpointError, Checkpoints, TrainingState, fingerprint
from cifar_pipeline.training.distribution import Distribution, DistributionError, agree, peers_reported, resolve
from cifar_pipeline.training.final_model import build_final_model
from cifar_pipeline.training.hardware import has_gpu, precision_policy
from cifar_pipeline.training.input_pipeline import evaluation_dataset, steps_per_epoch, training_dataset
from cifar_pipeline.training.lookahead import Lookahead
from cifar_pipeline.training.model import build_classifier, dirac_initialise, set_whitening
from cifar_pipeline.training.recipe import compile_classifier
from cifar_pipeline.training.trial_reporting import ReportToStudy


def new_classifier(
    settings: TrainParams, num_classes: int, stats: ChannelStats, train_images: np.ndarray
) -> keras.Model:
    """The params' network, compiled with the params' recipe: what `fit_classifier` trains.

    An airbench network's frozen whitening filters come from `train_images` (the training split only).
    """
    classifier = build_classifier(settings.model, num_classes=num_classes, stats=stats)
    set_whitening(classifier, train_images, stats)
    if settings.model.dirac_init:
        dirac_initialise(classifier)
    replicas = tf.distribute.get_strategy().num_replicas_in_sync  # made in the strategy's scope
    compile_classifier(classifier, settings, steps_per_epoch(len(train_images), settings.batch_size, replicas))
    return classifier


def fit_classifier(
    classifier: keras.Model,
    settings: TrainParams,
    train: tuple[np.ndarray, np.ndarray],
    validation: tuple[np.ndarray, np.ndarray],
    stats: ChannelStats,
    initial_epoch: int = 0,
    callbacks: list[keras.callbacks.Callback] | None = None,
) -> keras.callbacks.History:
    """The one training loop: the train stage and the accuracy benchmark both call it,
    so the benchmark measures exactly what `dvc repro` trains. Images are raw uint8; `stats`
    gives the augmentation's fill colour (the training split's mean)."""
    images, labels = train
    replicas = classifier.distribute_strategy.num_replicas_in_sync
    steps = steps_per_epoch(len(images), settings.batch_size, replicas)
    averaging = [Lookahead(steps * settings.epochs)] if settings.lookahead else []
    try:
        return classifier.fit(
            training_dataset(
                images, labels, settings.batch_size, settings.augment, settings.seed, stats.mean, replicas
            ),
            validation_data=evaluation_dataset(*validation, settings.batch_size, replicas),
            steps_per_epoch=steps,
            epochs=settings.epochs,
            initial_epoch=initial_epoch,
            # Raising, so the run ends FAILED with the reason instead of "finishing" a broken model.
            # Lookahead first: an epoch's checkpoint (EpochLogger) holds the weights it left.
            callbacks=[
                keras.callbacks.TerminateOnNaN(raise_error=True),
                StopWhenInterrupted(),
                *averaging,
                *(callbacks or []),
            ],
            shuffle=False,  # the dataset shuffles (seeded) itself
            verbose=2,
        )
    except RuntimeError as err:
        if (problem := diverged(err)) is not None:
            raise problem from None
        raise


@dataclass(frozen=True)
class TrainingSetup:
    """What a worker holds once prepared: the same on the chief and on every other worker, so
    they fit in step."""

    dataset: str
    params: Params
    distribution: Distribution
    split: Split
    stats: ChannelStats
    policy: str
    checkpoints: Checkpoints
    saved: TrainingState | None  # the checkpoint this run resumes from
    classifier: keras.Model

    @property
    def settings(self) -> TrainParams:
        return self.params.train

    @property
    def resumable(self) -> bool:
        # Multi-worker runs do not resume: the other workers have no copy of the chief's checkpoint.
        return self.distribution.mode != "multi_worker"


def training_setup(dataset: str, params: Params, split_dir: Path, stats_json: Path, *, chief: bool) -> TrainingSetup:
    """The strategy, seeds, data, precision and the classifier (new or from its checkpoint).

    `chief`: what the caller is (the train stage, or the worker command); TF_CONFIG must agree.
    """
    settings = params.train
    distribution = resolve(settings.distribute)  # first: logical CPUs must be set before TF's runtime starts
    check_role(distribution, chief)
    if settings.batch_size < distribution.replicas:
        raise DistributionError(
            f"train.batch_size {settings.batch_size} is smaller than the {distribution.replicas} replicas of "
            f"train.distribute {distribution.mode}: each needs an image per step; raise the batch size to at least "
            f"{distribution.replicas}, or use fewer devices"
        )
    check_xla_devices(distribution, settings.jit_compile, has_gpu())
    keras.utils.set_random_seed(settings.seed)
    if settings.deterministic:  # the same ops in the same order on every run; float32 below
        tf.config.experimental.enable_op_determinism()
    split = load_split(split_dir)
    stats = ChannelStats.read(stats_json)
    policy = precision_policy(False if settings.deterministic else settings.mixed_precision)
    keras.mixed_precision.set_global_policy(policy)
    run_fingerprint = fingerprint(dataset, params, split_dir, stats_json)
    agree(distribution, run_fingerprint)
    checkpoints = Checkpoints(dataset, run_fingerprint)
    saved = checkpoints.load() if distribution.mode != "multi_worker" else None
    classifier = None
    with distribution.scope():  # the model's (and a checkpoint's) variables belong to the strategy
        if saved:
            try:
                classifier = checkpoints.load_model(saved)
            except CheckpointError as err:
                # Its run cannot continue: end it FAILED with the reason, and start a new one.
                mlflow_runs.abandon_run(saved.run_id, f"{err}; retrained from scratch in a new run")
                checkpoints.discard(str(err))
                saved = None
        if classifier is None:
            classifier = new_classifier(settings, len(split.classes.names), stats, split.train.images)
    distribution.patch_for_fit(classifier)
    return TrainingSetup(
        dataset=dataset,
        params=params,
        distribution=distribution,
        split=split,
        stats=stats,
        policy=policy,
        checkpoints=checkpoints,
        saved=saved,
        classifier=classifier,
    )


def fit_with_strategy(
    setup: TrainingSetup, initial_epoch: int = 0, callbacks: tuple[keras.callbacks.Callback, ...] = ()
) -> None:
    """`fit_classifier` under the strategy; on a multi-worker cluster each worker then prints its
    weights' digest (equal on all of them)."""
    distribution = setup.distribution
    with peers_reported(distribution):
        fit_classifier(
            setup.classifier,
            setup.settings,
            setup.split.train.examples,
            setup.split.val.examples,
            setup.stats,
            initial_epoch=initial_epoch,
            callbacks=[*distribution.callbacks(), *callbacks],
        )
    if distribution.mode == "multi_worker":
        role = f"{distribution.task}{' (chief)' if distribution.chief else ''}"
        digest = weights_digest(setup.classifier)
        print(f"{setup.dataset}: {role} trained {setup.settings.epochs} epochs; weights {digest}")


def run_params(setup: TrainingSetup) -> dict:
    """The MLflow params of a training run: the same keys for every dataset, so CIFAR-10 and
    CIFAR-100 runs line up in MLflow's Compare view."""
    params, classifier, distribution = setup.params, setup.classifier, setup.distribution
    return {
        **recorded_params(params, setup.dataset),
        "num_classes": len(setup.split.classes.names),
        "train_images": len(setup.split.train.images),
        "val_images": len(setup.split.val.images),
        "model_parameters": classifier.count_params(),
        "resolved.dtype_policy": setup.policy,
        "resolved.jit_compile": bool(classifier.jit_compile),
        "resolved.device": "gpu" if has_gpu() else "cpu",
        "resolved.distribute": distribution.mode,
        "resolved.replicas": distribution.replicas,
        "tensorflow_version": tf.__version__,
        "keras_version": keras.__version__,
    }


@contextlib.contextmanager
def tracked_run(setup: TrainingSetup) -> Iterator[tuple[str, TrainingState]]:
    """The chief's MLflow run, new or resumed from the checkpoint, with what it already holds:
    the run id and the training state the epochs are added to."""
    saved, dataset = setup.saved, setup.dataset
    with mlflow_runs.training_run(
        dataset, run_params(setup), resume_id=saved.run_id if saved else None, tags=sweep_trial.run_tags(dataset)
    ) as (run_id, resumed):
        if resumed:
            print(f"{dataset}: resuming MLflow run {run_id} after epoch {saved.epochs_done} of {setup.settings.epochs}")
            state = saved
            mlflow_runs.log_missing_epochs(run_id, state.rows)
            mlflow.set_tag("resumed_after_epoch", str(state.epochs_done))
        else:
            state = setup.checkpoints.start(run_id) if setup.resumable else TrainingState(run_id=run_id)
            data = setup.params.data[dataset]
            for name, part in (("train", setup.split.train), ("val", setup.split.val)):
                mlflow_datasets.log_images_input(dataset, name, data.url, data.md5, data.label_mode, part.indices)
            if saved:  # the store lost the old run: log what the checkpoint remembers
                state.rows, state.epochs_done, state.model_file = saved.rows, saved.epochs_done, saved.model_file
                mlflow_runs.log_missing_epochs(run_id, state.rows)
        yield run_id, state


def write_outputs(
    model: keras.Model, run: dict, about: dict, rows: list[dict], model_dir: Path, loss_csv: Path, accuracy_csv: Path
) -> None:
    """The stage's DVC outputs; called once the run has ended FINISHED, so a store that fails
    before then leaves none."""
    with atomic_dir(model_dir) as tmp:
        model.save(tmp / MODEL_FILE)
        write_json(tmp / RUN_FILE, run)
        write_json(tmp / CLASSES_FILE, about)  # the class names travel with the model
    for path, keys in ((loss_csv, LOSS_KEYS), (accuracy_csv, ACCURACY_KEYS)):
        columns = ("epoch", *keys)
        write_csv(path, list(columns), ([row[key] for key in columns] for row in rows))


@mlflow_store.server_errors()
def train(
    dataset: str, params: Params, split_dir: Path, stats_json: Path, model_dir: Path, loss_csv: Path, accuracy_csv: Path
) -> str:
    """The train stage (the chief of a multi-worker cluster): set up, fit inside a tracked run,
    log the exported model, write the outputs; returns the MLflow run id."""
    setup = training_setup(dataset, params, split_dir, stats_json, chief=True)
    with tracked_run(setup) as (run_id, state):
        logger = EpochLogger(len(setup.split.train.images), setup.checkpoints if setup.resumable else None, state)
        trial = sweep_trial.for_dataset(dataset)
        reporting = (ReportToStudy(trial, run_id),) if trial else ()
        try:
            fit_with_strategy(setup, state.epochs_done, (logger, *reporting))
        except mlflow_runs.RunStopped:
            setup.checkpoints.clear()  # stopped on purpose: nothing to resume
            raise
        model = build_final_model(setup.classifier, setup.settings, setup.split.train.examples, setup.stats)
        classes = setup.split.classes
        about = {"names": classes.names, "dataset": dataset, "label_mode": classes.label_mode}
        with mlflow_runs.artifact_writes():
            mlflow.log_figure(training_curves(state.rows, f"{dataset}: training curves"), "plots/training_curves.png")
            model_uri = log_model(model, sample=setup.split.val.images[:8], about=about)
    write_outputs(
        model, {"run_id": run_id, "model_uri": model_uri}, about, state.rows, model_dir, loss_csv, accuracy_csv
    )
    setup.checkpoints.clear()
    return run_id


def train_as_worker(dataset: str, params: Params, split_dir: Path, stats_json: Path) -> None:
    """A non-chief worker of a multi-worker cluster: the chief's set-up and fit, in step with it;
    it logs and writes nothing."""
    fit_with_strategy(training_setup(dataset, params, split_dir, stats_json, chief=False))


def check_xla_devices(distribution: Distribution, jit_compile: str | bool, gpu: bool) -> None:
    """XLA compiles one step for one CPU: over several logical CPU devices (CIFAR_LOGICAL_CPUS) it
    fails inside `fit` reading a replica's variable on another device. GPUs each compile their own."""
    if jit_compile is True and distribution.mode == "mirrored" and distribution.replicas > 1 and not gpu:
        raise DistributionError(
            f"train.jit_compile is true, but XLA cannot compile one step over the {distribution.replicas} logical CPU "
            f"devices of train.distribute {distribution.mode}; set train.jit_compile to auto or false, or "
            "train.distribute to none"
        )


def check_role(distribution: Distribution, chief: bool) -> None:
    """The chief runs as the DVC stage, every other worker as `cifar_pipeline.training.worker`: refuse a mix-up."""
    worker = not chief
    if worker and distribution.mode != "multi_worker":
        raise DistributionError(
            "the worker command is for train.distribute: multi_worker; with this setting run `dvc repro` only"
        )
    if worker and distribution.chief:
        raise DistributionError(
            f"TF_CONFIG makes this process the chief ({distribution.task}); start the chief with `dvc repro`, "
            f"and this command only on the other workers"
        )
    if chief and not distribution.chief:
        raise DistributionError(
            f"TF_CONFIG makes this process {distribution.task}, not the chief: start it with "
            f"`python -m cifar_pipeline.training.worker <dataset>`; only the chief runs `dvc repro`"
        )


def weights_digest(model: keras.Model) -> str:
    """The model's weights in 16 hex digits: equal on every worker of a multi-worker run."""
    digest = hashlib.sha256()
    for weight in model.get_weights():
        digest.update(np.ascontiguousarray(weight).tobytes())
    return digest.hexdigest()[:16]
