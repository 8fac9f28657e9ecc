"""The DVC stage scripts, which dvc.yaml runs as `python -m stages.<name>` from the project root.

Importing this package puts the `src/` beside it first on `sys.path`, so a stage runs the code
of its own checkout: the workspace's under `dvc repro`, and a queued experiment's copy under
`dvc queue` (the copy whose files its dvc.lock records), whatever `pip install -e .` points at.
It replaces a `PYTHONPATH=src` prefix, which only POSIX shells understand.
"""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))
