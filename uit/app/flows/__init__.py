"""Prefect flows and deployments (``pipeline.py``, ``prefect.yaml`` at the project root): they run
DVC commands as tasks and publish results as artifacts; no ML logic (design §6)."""
