"""The register stage: the MLflow Model Registry version, its tags, and the champion rule."""
