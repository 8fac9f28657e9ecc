"""Reproducible CIFAR-10/100 training: DVC stages, Keras 3 on TensorFlow, MLflow tracking."""

import os

# TensorFlow prints a screenful of INFO lines (CPU features, missing CUDA) at import in
# every stage; keep warnings and errors. Set TF_CPP_MIN_LOG_LEVEL yourself to override.
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "1")

# TF leaves its oneDNN CPU kernels off on AMD CPUs; on, training is markedly faster there
# (docs/speed.md). GPU kernels are unaffected. Set TF_ENABLE_ONEDNN_OPTS=0 to turn them off.
os.environ.setdefault("TF_ENABLE_ONEDNN_OPTS", "1")
