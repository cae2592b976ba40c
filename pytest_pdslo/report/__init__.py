"""Reports: everything that prints or writes results (computation lives elsewhere)."""
