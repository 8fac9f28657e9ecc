"""The DVC stage scripts, which dvc.yaml runs as `python -m stages.<name>` from the project root.

Importing this package puts the `src/` beside it first on `sys.path`, so a stage runs the code
of its own checkout: the workspace's under `dvc repro`, and a queued experiment's copy under
`dvc queue` (the copy whose files its dvc.lock records), whatever `pip install -e .` points at.
It replaces a `PYTHONPATH=src` prefix, which only POSIX shells understand.

It also keeps scikit-learn out of a stage process. MLflow installs it, so `import keras` loads it
for Keras's scikit-learn wrappers (about a second of every TensorFlow stage's start), and no
stage uses them. Here, not in `src/`, because a stage process is the whole process: a notebook or
test that imports the package keeps its own `import sklearn`.
"""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))
sys.modules.setdefault("sklearn", None)  # `import sklearn` now raises ImportError, which Keras expects
