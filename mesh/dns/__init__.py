"""CoreDNS and kube-dns integration: ``simmesh prepare``, ``simmesh cleanup``, ``simmesh check``.

Modules, from pure to I/O:

- :mod:`mesh.dns.corefile`: the mesh zone's server block; add, remove and detect it in a
  Corefile (marked, idempotent, reversible byte for byte) or in AKS's ``coredns-custom`` map;
- :mod:`mesh.dns.kubedns`: kube-dns ``stubDomains`` edits and the mesh-owned CoreDNS objects;
- :mod:`mesh.dns.kube`: the few Kubernetes requests, by path, over kubernetes_asyncio;
- :mod:`mesh.dns.apply`: detect the cluster's DNS, apply the edits, restart the DNS pods;
- :mod:`mesh.dns.check`: the preflight table;
- :mod:`mesh.dns.cli`: arguments and exit codes (wired into ``mesh/cli.py``).

mesh.dns imports mesh.core only (import-linter: drivers never import each other).
"""
