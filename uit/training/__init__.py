"""Fine-tuning (design §4-§6): the identity sampler, the fit loop with its run-folder policy
(``train``), the checks before a run (``preflight``) and training on a prepared benchmark folder
(``benchmark``)."""
