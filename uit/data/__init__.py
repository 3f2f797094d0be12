"""Prepared benchmarks: the prepared folder and reading it back (``prepared``), images, and the
torch datasets and transforms over it (``dataset``, ``transforms``)."""
