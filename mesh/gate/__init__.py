"""The admission gate: every change of an SMI object, or of a Service's ``simmesh.io/``
annotations, simulated against the live mesh before the API server stores it (docs/gate.md).

:mod:`.review` reads an AdmissionReview and answers it (pure), :mod:`.job` builds the what-if
to run from the controller's objects, the measured traffic and the SLOs (pure),
:mod:`.worker` runs it in a process of its own (the only module here that imports the
simulator), :mod:`.measure` keeps the proxies' latest window, :mod:`.server` serves the
webhook over TLS beside the controller, and :mod:`.controller` is ``simmesh controller`` with
the gate's options. The controller itself never imports this package: the gate plugs into it.
"""
