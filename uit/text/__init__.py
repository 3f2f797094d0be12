"""Captions as attributes: spaCy parsing (design §3.3) and the attribute-keeping augmentation.

``lexicon`` and ``pipeline`` build the parser, ``parse`` runs it over a prepared benchmark,
``evaluate`` measures it against the synthetic ground truth, ``augment`` is the training-time
augmentation. Import the submodules directly; spaCy loads only with the parser.
"""
