"""edgebn build and its report, read back and gated by edgebn check."""
