"""DVC stages: one small module per stage, file in, file out, paths given as arguments."""
