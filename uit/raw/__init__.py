"""The benchmarks as their owners release them: the three on-disk formats (``formats``), their
readers (``readers``), and preparing them into the folders the rest reads (``prepare``)."""
