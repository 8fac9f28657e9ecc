"""`cifar-sweep`: named sweeps (sweeps.yaml) searched by Optuna, each trial a DVC experiment and
an MLflow child run of the sweep's parent run; workers on any number of machines share one study."""
