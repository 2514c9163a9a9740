"""Workload identities: SPIFFE IDs, the mesh's certificate authority and who may hold what.

The mesh proves a workload's identity (a ServiceAccount) with an X.509-SVID: a short-lived
certificate whose only subject alternative name is ``spiffe://<trust domain>/ns/<ns>/sa/<sa>``,
signed by the controller's root. The parts, each usable alone and each free of I/O:

- :mod:`.spiffe`: the SPIFFE ID of a ServiceAccount, parsed and formatted.
- :mod:`.ca`: keys, roots (generated or brought by the user), certificate signing requests
  checked field by field, and signing a checked request into an SVID.
- :mod:`.authority`: the signing root and the roots still trusted: rotation with an overlap
  (both roots in the trust bundle), verification of an SVID against the bundle.
- :mod:`.authorize`: the node authorizer, a pure decision: a node proxy gets the identity of a
  ServiceAccount only while a live pod of that account runs on its node.

Time comes in as ``now`` (an aware datetime); randomness only from ``cryptography`` (keys and
serial numbers), never from module state. The controller (signer) and the proxy (requester)
both import this package; it imports neither.
"""
