"""Properties of GAMMA routes, checked with hypothesis over random routes and requests.

- Match precedence: the rule the Engine picks is the one a naive oracle picks, written from the
  spec's words (HTTPRoute "Matches": an Exact path, the longest PathPrefix, a method, the most
  headers, the most query parameters, then the oldest route, the route first by namespace/name,
  the first rule, the first match), whatever order the objects were read in; and the compiled
  config is the same bytes for every order.
- Weights: over whole cycles each backendRef gets exactly its share, a weight of 0 nothing.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from mesh.core.model import Settings
from mesh.core.request import parse_request
from tests.core.builders import (
    Client,
    app,
    backend_of,
    backend_ref,
    compile_docs,
    http_route,
    parent,
)

FAST = settings(
    max_examples=150,
    deadline=None,
    database=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
SEGMENTS = ["a", "b", "ab"]
HEADERS = ["x-one", "x-two"]
BACKENDS = ["b0", "b1", "b2"]


@dataclass(frozen=True)
class Match:
    exact: bool
    path: str
    method: str | None
    headers: tuple[str, ...]  # header names that must equal "1"
    query: tuple[str, ...]  # query parameters that must equal "1"

    def doc(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "path": {"type": "Exact" if self.exact else "PathPrefix", "value": self.path}
        }
        if self.method:
            out["method"] = self.method
        if self.headers:
            out["headers"] = [{"name": h, "value": "1"} for h in self.headers]
        if self.query:
            out["queryParams"] = [{"name": q, "value": "1"} for q in self.query]
        return out

    def holds(self, path: str, method: str, headers: set[str], query: set[str]) -> bool:
        if self.exact:
            ok = path == self.path
        else:
            base = self.path.rstrip("/")
            ok = path == base or path.startswith(base + "/") or base == ""
        return (
            ok
            and (self.method is None or self.method == method)
            and set(self.headers) <= headers
            and set(self.query) <= query
        )

    def key(self) -> tuple[int, int, int, int, int]:
        """The spec's order, as plain numbers (smaller wins)."""
        length = len(self.path) if self.exact else len(self.path.rstrip("/"))
        return (
            0 if self.exact else 1,
            -length,
            0 if self.method else 1,
            -len(self.headers),
            -len(self.query),
        )


paths = st.lists(st.sampled_from(SEGMENTS), min_size=0, max_size=3).map(lambda s: "/" + "/".join(s))
matches = st.builds(
    Match,
    exact=st.booleans(),
    path=paths,
    method=st.sampled_from([None, "GET", "POST"]),
    headers=st.lists(st.sampled_from(HEADERS), unique=True, max_size=2).map(tuple),
    query=st.lists(st.sampled_from(["q1", "q2"]), unique=True, max_size=2).map(tuple),
)
rules = st.lists(
    st.tuples(st.lists(matches, min_size=1, max_size=3), st.sampled_from(BACKENDS)),
    min_size=1,
    max_size=3,
)
routes = st.lists(
    st.tuples(rules, st.sampled_from([None, "2024-01-01T00:00:00Z", "2024-02-01T00:00:00Z"])),
    min_size=1,
    max_size=4,
)
requests = st.tuples(
    paths,
    st.sampled_from(["GET", "POST"]),
    st.sets(st.sampled_from(HEADERS)),
    st.sets(st.sampled_from(["q1", "q2"])),
)


def documents(generated: list[tuple[list[tuple[list[Match], str]], str | None]]) -> list[Any]:
    docs: list[Any] = [*app("web", ips=["10.0.0.1"])]
    for name in BACKENDS:
        docs += app(name, ips=[f"10.0.1.{BACKENDS.index(name) + 1}"])
    for i, (route_rules, created) in enumerate(generated):
        docs.append(
            http_route(
                f"r{i}",
                [parent("web")],
                [
                    {"matches": [m.doc() for m in ms], "backendRefs": [backend_ref(target)]}
                    for ms, target in route_rules
                ],
                created=created,
            )
        )
    return docs


def oracle(
    generated: list[tuple[list[tuple[list[Match], str]], str | None]],
    request: tuple[str, str, set[str], set[str]],
) -> tuple[str, int] | None:
    """(route name, rule index) the spec picks, or None for a 404."""
    path, method, headers, query = request
    best = None
    for i, (route_rules, created) in enumerate(generated):
        for j, (ms, _) in enumerate(route_rules):
            for k, match in enumerate(ms):
                if match.holds(path, method, headers, query):
                    key = (*match.key(), created or "~", f"demo/r{i}", j, k)
                    if best is None or key < best[0]:
                        best = (key, (f"r{i}", j))
    return None if best is None else best[1]


@FAST
@given(generated=routes, request=requests, order=st.randoms(use_true_random=False))
def test_the_most_specific_match_wins_whatever_the_object_order(
    generated: list[tuple[list[tuple[list[Match], str]], str | None]],
    request: tuple[str, str, set[str], set[str]],
    order: Any,
) -> None:
    docs = documents(generated)
    shuffled = list(docs)
    order.shuffle(shuffled)
    config = compile_docs(docs)
    assert compile_docs(shuffled).to_json() == config.to_json()
    path, method, headers, query = request
    target = path + ("?" + "&".join(f"{q}=1" for q in sorted(query)) if query else "")
    items = [(h, "1") for h in sorted(headers)]
    decision = Client(config).engine.decide_http(
        listener=5000,
        request=parse_request(method, target, items, authority="web.demo.mesh"),
        source=None,
        now=0.0,
        rng=order,
    )
    expected = oracle(generated, request)
    if expected is None:
        assert decision.status == 404 and decision.matched is None
    else:
        assert decision.matched is not None, decision.detail
        assert (decision.matched.route, decision.matched.index) == (
            f"demo/{expected[0]}",
            expected[1],
        )


@FAST
@given(weights=st.lists(st.integers(0, 9), min_size=1, max_size=3), cycles=st.integers(1, 4))
def test_weights_are_exact_over_whole_cycles(weights: list[int], cycles: int) -> None:
    if not any(weights):
        weights[0] = 1
    docs: list[Any] = [*app("web", ips=["10.0.0.1"])]
    for i in range(len(weights)):
        docs += app(BACKENDS[i], ips=[f"10.0.1.{i + 1}"])
    refs = [backend_ref(BACKENDS[i], weight=w) for i, w in enumerate(weights)]
    docs.append(http_route("r", [parent("web")], [{"backendRefs": refs}]))
    client = Client(compile_docs(docs, Settings()))
    total = sum(weights) * cycles
    seen: dict[str, int] = {}
    for _ in range(total):
        name = backend_of(client.http("web.demo.mesh"))
        seen[name] = seen.get(name, 0) + 1
    expected = {f"demo/{BACKENDS[i]}": w * cycles for i, w in enumerate(weights) if w}
    assert seen == expected
