"""HTTP layer: thin routes over ferry.core."""
