"""What every layer shares: the typed config, errors, atomic file writes, the console and its
progress protocol, the error boundary, the device choice (design §2)."""
