"""Prefect flows and deployments: they run DVC commands and publish results; no ML logic.

The flows themselves arrive with the pipeline issue; this package exists from the start so the
layering (flows -> dvc -> stages -> uit) is visible in the tree.
"""
