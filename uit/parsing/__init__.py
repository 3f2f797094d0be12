"""The attribute parser (design §3.3): spaCy with the project's lexicon.

``lexicon`` and ``pipeline`` build the parser, ``parse`` runs it over a prepared benchmark,
``accuracy`` measures it against the synthetic ground truth. Import the submodules directly:
spaCy loads only with the parser.
"""
