"""``python -m uit.app.cli``: what torchrun starts in each process (``torchrun -m uit.app.cli
train ...``)."""

from uit.app.cli import main

main()
