"""MLflow: the one helper every stage logs through, and the figures and offline plots it
records. Imports only core."""
