"""The metric names users see in MLflow, the DVC plots and metrics files: declared once, so
the training log, its figures, the plots' columns and the register stage's checks agree.
dvc.yaml's `plots` repeat the plot columns; tests/test_dvc_yaml.py holds them equal."""

from __future__ import annotations

TOP5_ACCURACY = "top5_accuracy"  # the Keras metric's name; "val_" + it for the validation set

# Per epoch, the DVC plots' columns: loss and accuracy apart, as their scales differ (loss up
# to ~5 on CIFAR-100, accuracy 0-1).
LOSS_KEYS = ("loss", "val_loss")
ACCURACY_KEYS = ("accuracy", "val_accuracy", TOP5_ACCURACY, f"val_{TOP5_ACCURACY}")
# Per epoch, in MLflow only.
LEARNING_RATE = "learning_rate"
EPOCH_TIME = "epoch_time_s"
THROUGHPUT = "images_per_second"

# The evaluate stage's, on the test set.
TEST_KEYS = ("test_loss", "test_accuracy", f"test_{TOP5_ACCURACY}")
