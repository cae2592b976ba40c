"""Launching and measuring real vLLM (the ``vllm`` target).

``target.VllmTarget`` launches ``vllm serve`` per deployment; ``process`` manages server
processes (``_watchdog.py`` stops them if the launcher dies); ``command`` builds their
command lines, environments and P/D KV connector configs; ``proxy`` is a small
prefill/decode proxy (ExampleConnector resend or NIXL ``kv_transfer_params`` mode);
``metrics`` reads vLLM's ``/metrics``; ``fingerprint`` records what a result was measured
on. ``cli_shim.py`` and ``_site/`` run inside the vLLM interpreter.

Nothing is imported here, so importing the package starts nothing and needs no vLLM.
"""
