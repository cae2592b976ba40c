"""Repo-level defaults for running ``pytest suites/`` from a checkout.

The plugin itself is loaded through its ``pytest11`` entry point; nothing here
is needed by an installed user.
"""

collect_ignore_glob = ["benchmarks/*"]
