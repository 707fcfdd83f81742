"""convplat."""
