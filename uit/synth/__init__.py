"""The procedural synthetic benchmark (design §3.4), in the exact formats of the real three.

``uit.synth.generate`` writes it; the package imports nothing itself, so code that only reads
the synthetic world (its attributes and caption grammar, for diagnostics) does not load the
renderer and the benchmark formats with it.
"""
