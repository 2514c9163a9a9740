"""An SMI conformance suite, runnable against any cluster (``make conformance``).

It checks that the mesh on a cluster does what the SMI objects say, the way a user sees it:
every case (``cases.py``: data, in the vocabulary of ``model.py``) gets its own namespaces,
test app pods with their own ServiceAccounts, and SMI objects; calls are made from inside those
pods (the test app's ``/call``), so each caller has a real mesh identity, and the runner
(``runner.py``) reaches the pods only through the API server (``kube.py``, the official
``kubernetes`` client). What belongs to one mesh (is it installed and ready, which mode, which
DNS names) is behind ``adapter.py``; the cases speak only SMI and plain HTTP, TCP and UDP.
Results: a table, JUnit XML and JSON (``report.py``), with the propagation time of every change.

It uses the project only as an outside user would (an import-linter contract says so): the
``simmesh`` CLI, Kubernetes objects and HTTP.
"""
