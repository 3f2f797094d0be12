"""The procedural synthetic benchmark (design §3.4), in the exact formats of the real three."""

from uit.synth.generate import SIZES, generate_benchmark, synthesize

__all__ = ["SIZES", "generate_benchmark", "synthesize"]
