"""Captions on the training side, without spaCy: reading the parse stage's output (``parsed``),
the attribute-keeping augmentation (``augment``) and the released code's token masking
(``masking``). The parser itself is ``uit.parsing``."""
