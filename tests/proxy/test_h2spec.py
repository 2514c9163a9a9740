"""h2spec, the outside HTTP/2 conformance tester, passes all 145 cases against the h2c front
end: with responses relayed from a backend and with the proxy's own answers (unknown host).

The binary is built by ``make k8s-bins`` (``tools/k8s-bins.sh h2spec``). Without it the test is
skipped, except under ``CI=true``, where a missing h2spec is a failure: CI must run it.
"""

from __future__ import annotations

import os

import pytest

from tests.proxy import h2spec

CASES = 145


@pytest.mark.parametrize("routed", [True, False], ids=["relayed", "answered-by-the-proxy"])
async def test_h2spec_passes_every_case(routed: bool) -> None:
    path = h2spec.binary()
    if path is None:
        if os.environ.get("CI", "").lower() == "true":
            pytest.fail("h2spec is not built (make k8s-bins builds it); CI must run it")
        pytest.skip("h2spec is not built: make k8s-bins (or bash tools/k8s-bins.sh h2spec)")
    result, log = await h2spec.run(path, routed=routed)
    assert (result.total, result.passed) == (CASES, CASES), f"{result.failures()}\n{log[-3000:]}"
