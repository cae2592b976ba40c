"""Launching and measuring real vLLM (the ``vllm`` target).

``target.VllmTarget`` launches ``vllm serve`` per deployment; ``process`` manages server
processes; ``command`` builds their command lines and environments; ``proxy`` is a small
prefill/decode proxy; ``metrics`` reads vLLM's ``/metrics``; ``fingerprint`` records what a
result was measured on. ``cli_shim.py`` and ``_site/`` run inside the vLLM interpreter.

Nothing is imported here, so importing the package starts nothing and needs no vLLM.
"""
