"""The ``llm-d`` target: candidate deployments on Kubernetes, measured through the gateway.

* ``spec``: the ``k8s:`` block of a suite (and of a deployment): image, GPUs, gateway,
  storage, namespaces, in-cluster load. Pure pydantic; ``suite.py`` imports it.
* ``render``: plain Kubernetes manifests (Deployments + Services per role, labelled for
  llm-d's InferencePool; a Job for in-cluster load). Pure functions, no cluster.
* ``wire``: ``RequestRecord`` <-> compact JSON lines, for records that come back
  from a load Job through its pod log.
* ``loadjob``: the load generator's entrypoint inside the cluster.
* ``driver``: apply / wait / logs / teardown with the official ``kubernetes`` client.
* ``target``: ``LlmdTarget``, the lifecycle (one deployment at a time, teardown on
  change, failure, Ctrl-C and exit), measuring with ``HttpTarget``.
* ``replay``: a loopback Kubernetes API server that replays recorded responses (tests).

Nothing here imports the ``kubernetes`` package at module level except ``driver``;
``python -m pytest_pdslo.k8s render`` needs only PyYAML and pydantic.
"""
