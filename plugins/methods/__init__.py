"""First-party methods, one module per method."""
