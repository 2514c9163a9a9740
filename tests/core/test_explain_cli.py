"""``simmesh explain`` on manifests directories written here: ACL and default modes, HTTP (-X, -H),
--tcp and --udp, --acl overriding mesh.yaml, and bad input (exit code 2)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import yaml

from mesh.cli import main
from tests.core.builders import (
    app,
    backend_ref,
    http_match,
    http_route,
    parent,
    port_route,
    prefix,
    route_group,
    rule,
    traffic_split,
    traffic_target,
)

TCP = {"simmesh.io/traffic-type": "tcp"}
UDP = {"simmesh.io/traffic-type": "udp"}


def world() -> list[dict[str, Any]]:
    return [
        *app("frontend", ips=["10.1.0.1"], cluster_ip="10.96.0.1"),
        *app("backend", ips=["10.2.0.1"], cluster_ip="10.96.0.2"),
        *app("backend-v2", sa="backend", ips=["10.2.0.2"]),
        *app("db", ips=["10.3.0.1"], ports=[("pg", 5432, 15432)], annotations=TCP),
        *app("dns", ips=["10.4.0.1"], ports=[("dns", 53, 5353)], annotations=UDP),
        route_group(
            "backend-routes",
            [
                http_match("api", path="/api", methods=["GET"], headers=[{"x-user": "[a-z]+"}]),
                http_match("cleanup", path="/api/cache", methods=["DELETE"]),
            ],
        ),
        traffic_target(
            "frontend-to-backend",
            dest="backend",
            sources=["frontend"],
            rules=[rule("HTTPRouteGroup", "backend-routes")],
        ),
        port_route("pg", {"name": "pg", "ports": [15432]}),
        traffic_target(
            "backend-to-db", dest="db", sources=["backend"], rules=[rule("TCPRoute", "pg")]
        ),
        port_route("dns", [{"name": "dns", "ports": [5353]}], kind="UDPRoute"),
        traffic_target(
            "all-to-dns", dest="dns", sources=["backend"], rules=[rule("UDPRoute", "dns")]
        ),
    ]


def write(directory: Path, docs: list[Any], settings: dict[str, Any] | None = None) -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    (directory / "manifests.yaml").write_text(yaml.safe_dump_all(docs, sort_keys=False))
    if settings is not None:
        (directory / "mesh.yaml").write_text(yaml.safe_dump(settings))
    return directory


@pytest.fixture
def acl_dir(tmp_path: Path) -> Path:
    return write(tmp_path / "acl", world(), {"acl": True})


@pytest.fixture
def plain_dir(tmp_path: Path) -> Path:
    return write(tmp_path / "plain", world())


def explain(capsys: pytest.CaptureFixture[str], directory: Path, *args: str) -> dict[str, Any]:
    code = main(["explain", str(directory), *args, "-o", "json"])
    out = capsys.readouterr()
    assert code == 0, out.err
    return dict(json.loads(out.out))


def explain_text(capsys: pytest.CaptureFixture[str], directory: Path, *args: str) -> str:
    code = main(["explain", str(directory), *args])
    out = capsys.readouterr()
    assert code == 0, out.err
    return out.out


def fails(capsys: pytest.CaptureFixture[str], *argv: str) -> str:
    code = main(list(argv))
    err = capsys.readouterr().err
    assert code == 2
    assert err.startswith("simmesh: error: ")
    return err


# -- ACL mode -------------------------------------------------------------------------------------


def test_acl_http_allowed_with_header(capsys: pytest.CaptureFixture[str], acl_dir: Path) -> None:
    answer = explain(
        capsys,
        acl_dir,
        "--from",
        "demo/frontend",
        "--url",
        "http://backend.demo.mesh/api/items?page=2",
        "-H",
        "X-User: ann",
    )
    assert (answer["allowed"], answer["status"], answer["reasonCode"]) == (True, None, "allowed")
    assert answer["rule"] == (
        "TrafficTarget demo/frontend-to-backend (HTTPRouteGroup backend-routes match 'api')"
    )
    assert answer["route"] == {
        "service": "demo/backend",
        "port": 80,
        "protocol": "http",
        "listener": 5000,
        "scheme": "http",
    }
    assert answer["endpoint"] == {
        "ip": "10.2.0.1",
        "port": 8080,
        "node": "node-0",
        "identity": "demo/backend",
    }
    assert answer["request"]["headers"] == {"host": "backend.demo.mesh", "x-user": "ann"}
    assert answer["errors"] == []


@pytest.mark.parametrize(
    ("args", "code"),
    [
        (["-H", "x-user: Ann"], "no-matching-route"),  # the whole value must match
        ([], "no-matching-route"),  # the header is required
        (["-X", "POST", "-H", "x-user: ann"], "no-matching-route"),
    ],
)
def test_acl_http_denied_by_route_match(
    capsys: pytest.CaptureFixture[str], acl_dir: Path, args: list[str], code: str
) -> None:
    url = "http://backend.demo.mesh/api/items"
    answer = explain(capsys, acl_dir, "--from", "demo/frontend", "--url", url, *args)
    assert (answer["allowed"], answer["status"], answer["reasonCode"]) == (False, 403, code)
    assert answer["endpoint"] is None


def test_acl_http_method_selects_another_match(
    capsys: pytest.CaptureFixture[str], acl_dir: Path
) -> None:
    url = "http://backend.demo.mesh:80/api/cache/all"
    answer = explain(capsys, acl_dir, "--from", "demo/frontend", "--url", url, "-X", "delete")
    assert answer["allowed"] is True
    assert "match 'cleanup'" in answer["rule"]
    assert answer["request"]["method"] == "DELETE"


def test_acl_http_ungranted_source_and_no_source(
    capsys: pytest.CaptureFixture[str], acl_dir: Path
) -> None:
    url = "http://10.96.0.2/api"
    other = explain(capsys, acl_dir, "--from", "demo/db", "--url", url, "-H", "x-user: a")
    assert (other["status"], other["reasonCode"]) == (403, "not-granted")
    assert "demo/db" in other["reason"] and "demo/backend" in other["reason"]
    anonymous = explain(capsys, acl_dir, "--url", url)
    assert (anonymous["status"], anonymous["reasonCode"], anonymous["source"]) == (
        403,
        "no-source-identity",
        None,
    )


def test_acl_text_output(capsys: pytest.CaptureFixture[str], acl_dir: Path) -> None:
    denied = explain_text(
        capsys, acl_dir, "--from", "demo/frontend", "--url", "http://backend.demo.mesh/metrics"
    )
    assert denied.startswith("DENIED (403): ")
    assert "  route:    demo/backend port 80 (http, mesh listener 5000)" in denied
    allowed = explain_text(
        capsys,
        acl_dir,
        "--from",
        "demo/frontend",
        "--url",
        "http://backend.demo.mesh/api",
        "-H",
        "x-user: bo",
    )
    assert allowed.startswith("ALLOWED: granted by TrafficTarget demo/frontend-to-backend")
    assert "  endpoint: 10.2.0.1:8080 (identity demo/backend, node node-0)" in allowed


def test_explain_reads_the_path_as_the_proxy_does(
    capsys: pytest.CaptureFixture[str], acl_dir: Path
) -> None:
    base = ["--from", "demo/frontend", "-H", "x-user: bo", "--url"]
    escaped = explain(capsys, acl_dir, *base, "http://backend.demo.mesh/api/../metrics")
    assert (escaped["status"], escaped["reasonCode"]) == (403, "no-matching-route")
    assert escaped["request"]["target"] == "/metrics"
    text = explain_text(capsys, acl_dir, *base, "http://backend.demo.mesh/x/%2e%2e/api/items")
    assert text.startswith("ALLOWED: ")
    assert "  path:     /api/items (as sent: /x/%2e%2e/api/items)" in text
    bad = explain(capsys, acl_dir, *base, "http://backend.demo.mesh/api/..%2fmetrics")
    assert (bad["allowed"], bad["status"], bad["reasonCode"]) == (False, 400, "bad-request")
    assert "'/'" in bad["reason"] and bad["backends"] == []
    twice = explain(capsys, acl_dir, *base, "http://backend.demo.mesh/api", "-H", "x-user: x")
    assert (twice["status"], twice["reasonCode"]) == (403, "no-matching-route")
    assert twice["request"]["headers"]["x-user"] == "bo, x"


def test_acl_tcp(capsys: pytest.CaptureFixture[str], acl_dir: Path) -> None:
    allowed = explain(capsys, acl_dir, "--from", "demo/backend", "--tcp", "db.demo.mesh:5432")
    assert allowed["allowed"] is True
    assert allowed["rule"] == "TrafficTarget demo/backend-to-db (TCPRoute pg ports [15432])"
    assert allowed["route"]["protocol"] == "tcp" and allowed["route"]["listener"] == 10000
    assert allowed["endpoint"]["port"] == 15432
    assert allowed["request"] == {"protocol": "tcp", "host": "db.demo.mesh", "port": 5432}
    denied = explain(
        capsys, acl_dir, "--from", "demo/frontend", "--tcp", "db.demo.svc.cluster.local:5432"
    )
    assert (denied["allowed"], denied["status"], denied["reasonCode"]) == (
        False,
        403,
        "not-granted",
    )


def test_acl_udp(capsys: pytest.CaptureFixture[str], acl_dir: Path) -> None:
    allowed = explain(capsys, acl_dir, "--from", "demo/backend", "--udp", "dns.demo.mesh:53")
    assert allowed["allowed"] is True
    assert allowed["route"]["protocol"] == "udp" and allowed["route"]["listener"] == 15000
    assert allowed["endpoint"]["port"] == 5353
    denied = explain(capsys, acl_dir, "--from", "demo/frontend", "--udp", "dns.demo.mesh:53")
    assert denied["status"] == 403


def test_acl_split_lists_each_backend_and_denies_if_any_weighted_backend_denies(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    docs = [
        *world(),
        *app("api-v1", sa="backend", ips=["10.5.0.1"]),
        *app("api-v2", sa="db", ips=["10.5.0.2"]),
        *app("api", ips=[]),
        port_route("any", None),
        traffic_target(
            "to-api", dest="backend", sources=["frontend"], rules=[rule("TCPRoute", "any")]
        ),
        traffic_split("api-split", "api", [("api-v1", 3), ("api-v2", 1)]),
    ]
    directory = write(tmp_path / "split", docs, {"acl": True})
    answer = explain(capsys, directory, "--from", "demo/frontend", "--url", "http://api.demo.mesh/")
    assert answer["allowed"] is False and answer["status"] == 403
    assert answer["split"] == "demo/api-split"
    assert "25% of requests go to backends that deny them" in answer["reason"]
    assert [(b["service"], b["weight"], b["allowed"]) for b in answer["backends"]] == [
        ("demo/api-v1", 3, True),
        ("demo/api-v2", 1, False),
    ]


# -- default mode and --acl -----------------------------------------------------------------------


def test_default_mode_allows_everything(
    capsys: pytest.CaptureFixture[str], plain_dir: Path
) -> None:
    http = explain(
        capsys,
        plain_dir,
        "--from",
        "demo/db",
        "--url",
        "http://backend.demo.mesh/metrics",
        "-X",
        "PATCH",
    )
    assert http["allowed"] is True and http["reason"] == "access control is off (default mode)"
    assert http["endpoint"]["ip"] == "10.2.0.1"
    assert explain(capsys, plain_dir, "--tcp", "db.demo.mesh:5432")["allowed"] is True
    assert explain(capsys, plain_dir, "--udp", "dns.demo.mesh:53")["allowed"] is True


@pytest.mark.parametrize("settings", [None, {"acl": False}])
def test_acl_flag_overrides_mesh_yaml(
    capsys: pytest.CaptureFixture[str], tmp_path: Path, settings: dict[str, Any] | None
) -> None:
    directory = write(tmp_path / "override", world(), settings)
    args = ["--from", "demo/db", "--url", "http://backend.demo.mesh/api"]
    assert explain(capsys, directory, *args)["allowed"] is True
    assert explain(capsys, directory, *args, "--acl")["status"] == 403
    tcp = ["--from", "demo/frontend", "--tcp", "db.demo.mesh:5432"]
    assert explain(capsys, directory, *tcp)["allowed"] is True
    assert explain(capsys, directory, *tcp, "--acl")["status"] == 403


def test_object_errors_are_listed_and_do_not_stop_explain(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    bad = traffic_target(
        "broken", dest="backend", sources=["frontend"], rules=[rule("GRPCRoute", "x")]
    )
    directory = write(tmp_path / "errors", [*world(), bad], {"acl": True})
    text = explain_text(capsys, directory, "--from", "demo/backend", "--tcp", "db.demo.mesh:5432")
    assert text.startswith("ALLOWED")
    assert "  warning:  TrafficTarget demo/broken: spec.rules[0].kind: expected one of" in text


# -- bad input: exit code 2 ------------------------------------------------------------------------


def test_malformed_yaml_is_exit_2(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    directory = write(tmp_path / "bad-yaml", world())
    (directory / "broken.yaml").write_text("kind: Service\nmetadata: {name: [unclosed\n")
    err = fails(capsys, "explain", str(directory), "--url", "http://backend.demo.mesh/")
    assert "broken.yaml" in err and "not valid YAML" in err


def test_malformed_mesh_yaml_is_exit_2(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    directory = write(tmp_path / "bad-settings", world())
    (directory / "mesh.yaml").write_text("acl: [true\n")
    err = fails(capsys, "explain", str(directory), "--url", "http://backend.demo.mesh/")
    assert "mesh.yaml" in err
    (directory / "mesh.yaml").write_text("acll: true\n")
    err = fails(capsys, "explain", str(directory), "--url", "http://backend.demo.mesh/")
    assert "acll" in err and "unknown setting" in err


def test_a_document_that_is_not_an_object_is_exit_2(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    directory = write(tmp_path / "not-object", world())
    (directory / "list.yaml").write_text("- just\n- a list\n")
    err = fails(capsys, "explain", str(directory), "--url", "http://backend.demo.mesh/")
    assert "list.yaml" in err


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--url", "http://nobody.demo.mesh/"], "no meshed service answers"),
        (["--url", "ftp://backend.demo.mesh/"], "--url"),
        (["--tcp", "db.demo.mesh"], "expected HOST:PORT"),
        (["--udp", "dns.demo.mesh:99999"], "expected HOST:PORT"),
        (["--tcp", "backend.demo.mesh:80"], "no meshed service answers"),
        (["--url", "http://backend.demo.mesh/", "-H", "no-colon"], "expected 'Name: value'"),
        (["--url", "http://backend.demo.mesh/", "--from", "frontend"], "NAMESPACE/SERVICEACCOUNT"),
    ],
)
def test_bad_arguments_are_exit_2(
    capsys: pytest.CaptureFixture[str], acl_dir: Path, args: list[str], message: str
) -> None:
    assert message in fails(capsys, "explain", str(acl_dir), *args)


def test_missing_directory_is_exit_2(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    assert "not a directory" in fails(capsys, "explain", str(tmp_path / "nope"), "--tcp", "a:1")


@pytest.mark.parametrize("acl", [False, True])
def test_no_ready_endpoint_is_503_in_both_modes(
    capsys: pytest.CaptureFixture[str], tmp_path: Path, acl: bool
) -> None:
    docs = [
        *app("web", ips=["10.7.0.1"], ready=[False]),
        *app("db", ips=[], ports=[("pg", 5432, 5432)], annotations=TCP),
    ]
    directory = write(tmp_path / "empty", docs, {"acl": acl})
    http = explain(capsys, directory, "--from", "demo/web", "--url", "http://web.demo.mesh/")
    tcp = explain(capsys, directory, "--from", "demo/web", "--tcp", "db.demo.mesh:5432")
    for answer in (http, tcp):
        assert (answer["allowed"], answer["status"], answer["reasonCode"], answer["endpoint"]) == (
            False,
            503,
            "no-ready-endpoints",
            None,
        )
    text = explain_text(capsys, directory, "--url", "http://web.demo.mesh/")
    assert text.startswith("DENIED (503): ")


# -- GAMMA routes ---------------------------------------------------------------------------------


def gamma_world() -> list[dict[str, Any]]:
    edit = {"set": [{"name": "X-Canary", "value": "1"}]}
    rewrite = {"path": {"type": "ReplacePrefixMatch", "replacePrefixMatch": "/api/v2"}}
    route = http_route(
        "backend-routes",
        [parent("backend", port=80)],
        [
            {
                "name": "canary",
                "matches": [prefix("/api/next")],
                "filters": [
                    {"type": "RequestHeaderModifier", "requestHeaderModifier": edit},
                    {"type": "URLRewrite", "urlRewrite": rewrite},
                ],
                "backendRefs": [
                    backend_ref("backend", weight=3),
                    backend_ref("backend-v2", weight=1),
                    backend_ref("gone", weight=1),
                ],
            },
            {
                "matches": [prefix("/old")],
                "filters": [
                    {"type": "RequestRedirect", "requestRedirect": {"hostname": "new.example"}}
                ],
            },
            {"matches": [prefix("/api")], "backendRefs": [backend_ref("backend")]},
        ],
    )
    return [*world(), route]


def test_gamma_names_the_route_rule_filters_and_backends(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    directory = write(tmp_path / "gamma", gamma_world())
    answer = explain(capsys, directory, "--url", "http://backend.demo.mesh/api/next/x?y=1")
    gamma = answer["gamma"]
    assert gamma["route"] == "HTTPRoute demo/backend-routes"
    assert gamma["rule"] == {"index": 0, "name": "canary"}
    assert gamma["match"] == "PathPrefix /api/next"
    assert gamma["filters"] == [
        "request set X-Canary: 1",
        "URLRewrite path ReplacePrefixMatch '/api/v2'",
    ]
    assert gamma["backend"] == "demo/backend:80"
    backends = {b["service"]: b for b in answer["backends"]}
    assert backends["demo/backend:80"]["sent"] == {
        "target": "/api/v2/x?y=1",
        "host": "backend.demo.mesh",
    }
    assert backends["demo/gone:80"]["reasonCode"] == "invalid-backend"
    assert not answer["allowed"] and answer["status"] == 500  # a fifth of requests get 500
    assert answer["endpoint"] is None


def test_gamma_redirect_and_no_rule(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    directory = write(tmp_path / "gamma", gamma_world())
    answer = explain(capsys, directory, "--url", "http://backend.demo.mesh/old/page")
    assert (answer["status"], answer["reasonCode"]) == (302, "redirect")
    assert answer["gamma"]["location"] == "http://new.example/old/page"
    text = explain_text(capsys, directory, "--url", "http://backend.demo.mesh/old/page")
    assert text.startswith("REDIRECTED (302)")
    assert "  location: http://new.example/old/page" in text
    lost = explain(capsys, directory, "--url", "http://backend.demo.mesh/elsewhere")
    assert (lost["status"], lost["reasonCode"]) == (404, "no-matching-rule")


def test_gamma_in_acl_mode_checks_the_chosen_backends(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    directory = write(tmp_path / "gamma", gamma_world(), {"acl": True})
    args = ["--from", "demo/frontend", "-H", "X-User: ann"]
    answer = explain(capsys, directory, *args, "--url", "http://backend.demo.mesh/api/items")
    assert answer["allowed"] and answer["gamma"]["rule"]["index"] == 2
    assert answer["rule"] == (
        "TrafficTarget demo/frontend-to-backend (HTTPRouteGroup backend-routes match 'api')"
    )
    text = explain_text(capsys, directory, *args, "--url", "http://backend.demo.mesh/api/items")
    assert "  matched:  HTTPRoute demo/backend-routes rule 2: PathPrefix /api" in text
