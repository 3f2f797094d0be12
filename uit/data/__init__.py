"""Datasets: the three on-disk formats, prepared manifests and the synthetic benchmark."""
