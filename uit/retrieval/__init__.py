"""Retrieval with a trained dual encoder: encode, rank, score (``evaluate``, ``metrics``) and
search a gallery of image files with a cached embedding table (``search``)."""
