"""The simulator: a calibrated virtual-time engine and an HTTP face over it."""
