"""The benchmarks as their owners release them: the registry of on-disk formats (``formats``),
their reader (``readers``), and preparing them into the folders the rest reads (``prepare``)."""
