"""The procedural synthetic benchmark (design §3.4), in the exact on-disk format of each benchmark.

``uit.synth.generate`` writes it; the package imports nothing itself, so code that only reads
the synthetic world (its attributes and caption grammar, for diagnostics) does not load the
renderer with it.
"""
