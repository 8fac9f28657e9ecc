"""Names of the files inside stage outputs, shared by the stages that write and read them.

A leaf module (no imports), so a stage that only reads a model folder (evaluate) does not
import, and so in dvc.yaml does not depend on, the code that trains one.
"""

MODEL_FILE = "model.keras"
RUN_FILE = "mlflow_run.json"
CLASSES_FILE = "classes.json"  # beside the model: {"names": [...], "dataset": ..., "label_mode": ...}
