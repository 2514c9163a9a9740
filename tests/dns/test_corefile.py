"""The Corefile edits: idempotent, reversible byte for byte, on every Corefile shape we know."""

from __future__ import annotations

import re

import pytest
from hypothesis import given
from hypothesis import strategies as st

from mesh.dns import corefile as cf
from tests.dns import corefiles

MESH = cf.DnsSettings()
OTHER = cf.DnsSettings(zone="oldmesh", mesh_namespace="old", cluster_domain="k8s.local")
SHAPES = pytest.mark.parametrize("text", corefiles.SHAPES.values(), ids=corefiles.SHAPES.keys())

EXPECTED_KUBEADM_TAIL = """\
    loadbalance
}
# simmesh:begin zone=mesh
# Written by `simmesh prepare`; `simmesh cleanup` removes it. Edits here are lost.
mesh:53 {
    errors
    rewrite stop {
        name regex ^([a-z0-9-]+)\\.([a-z0-9-]+)\\.mesh\\.$ {1}-6d61657368-{2}.simmesh.svc.cluster.local.
        answer name ^([a-z0-9-]+)-6d61657368-([a-z0-9-]+)\\.simmesh\\.svc\\.cluster\\.local\\.$ {1}.{2}.mesh.
    }
    kubernetes cluster.local
    template ANY ANY mesh {
        rcode NXDOMAIN
    }
    cache 30
    reload
}
# simmesh:end
"""  # noqa: E501


# --------------------------------------------------------------------------- the properties


@SHAPES
def test_prepare_twice_equals_once(text: str) -> None:
    once = cf.prepare(text, MESH)
    assert cf.prepare(once, MESH) == once


@SHAPES
def test_cleanup_restores_the_original_byte_for_byte(text: str) -> None:
    assert cf.cleanup(cf.prepare(text, MESH)) == text


@SHAPES
def test_cleanup_of_an_unprepared_corefile_is_a_no_op(text: str) -> None:
    assert cf.cleanup(text) == text
    assert cf.state(text, MESH) is cf.BlockState.ABSENT


@SHAPES
def test_prepare_keeps_the_original_as_a_prefix_and_adds_one_block(text: str) -> None:
    prepared = cf.prepare(text, MESH)
    assert prepared.startswith(text)
    assert prepared.count(cf.BEGIN) == prepared.count(cf.END) == 1
    assert cf.state(prepared, MESH) is cf.BlockState.CURRENT
    assert cf.block_zones(prepared) == ["mesh"]


@SHAPES
def test_a_stale_block_for_another_zone_is_replaced(text: str) -> None:
    stale = cf.prepare(text, OTHER)
    assert cf.state(stale, MESH) is cf.BlockState.STALE
    assert cf.prepare(stale, MESH) == cf.prepare(text, MESH)
    assert cf.cleanup(cf.prepare(stale, MESH)) == text


@SHAPES
def test_the_block_follows_the_files_line_endings(text: str) -> None:
    added = cf.prepare(text, MESH)[len(text) :]
    if "\r\n" in text:
        assert added.count("\n") == added.count("\r\n") > 0
    else:
        assert "\r" not in added


def test_the_block_for_the_kubeadm_default_corefile_exactly() -> None:
    prepared = cf.prepare(corefiles.KUBEADM, MESH)
    assert prepared == corefiles.KUBEADM.removesuffix("    loadbalance\n}\n") + (
        EXPECTED_KUBEADM_TAIL
    )


def test_no_trailing_newline_stays_without_one() -> None:
    prepared = cf.prepare(corefiles.NO_TRAILING_NEWLINE, MESH)
    assert prepared.startswith(corefiles.NO_TRAILING_NEWLINE + "\n" + cf.BEGIN)
    assert prepared.endswith(cf.END)


def test_an_empty_corefile_gets_just_the_block() -> None:
    prepared = cf.prepare("", MESH)
    assert prepared.startswith(cf.BEGIN) and prepared.endswith(cf.END)
    assert cf.cleanup(prepared) == ""


def test_indentation_follows_the_file() -> None:
    tabs = cf.prepare(corefiles.TABS, MESH)[len(corefiles.TABS) :]
    assert "\n\terrors\n" in tabs and "\n\t\tname regex" in tabs
    k3s = cf.prepare(corefiles.K3S, MESH)[len(corefiles.K3S) :]
    assert "\n    errors\n" in k3s  # k3s indents blocks by 4, nested options by 2


@pytest.mark.parametrize(
    ("text", "key"),
    [
        (corefiles.KUBEADM, "mesh:53 {"),
        (corefiles.OTHER_PORT, "mesh:5353 {"),
        (corefiles.NO_PORT, "mesh {"),
        (corefiles.SCHEME_AND_SNIPPET, "mesh:53 {"),
        (corefiles.EMPTY, "mesh:53 {"),
    ],
)
def test_the_block_listens_where_the_root_block_does(text: str, key: str) -> None:
    assert f"\n{key}\n" in cf.prepare(text, MESH)


def test_other_simmesh_settings_end_up_in_the_rewrite() -> None:
    settings = cf.DnsSettings(zone="mesh.internal", mesh_namespace="m", cluster_domain="k8s.lan")
    block = "\n".join(cf.server_block(settings))
    assert r"\.mesh\.internal\.$ {1}-6d61657368-{2}.m.svc.k8s.lan." in block
    assert r"\.m\.svc\.k8s\.lan\.$ {1}.{2}.mesh.internal." in block
    assert "kubernetes k8s.lan" in block


def test_the_rewrite_regexes_map_names_both_ways() -> None:
    name_rule, answer_rule = cf.rewrite_rules(MESH)
    _, _, query_re, query_to = name_rule.split()
    _, _, answer_re, answer_to = answer_rule.split()
    groups = re.match(query_re, "web.shop.mesh.")
    assert groups is not None
    shadow = query_to.replace("{1}", groups[1]).replace("{2}", groups[2])
    assert shadow == "web-6d61657368-shop.simmesh.svc.cluster.local."
    back = re.match(answer_re, shadow)
    assert back is not None
    assert answer_to.replace("{1}", back[1]).replace("{2}", back[2]) == "web.shop.mesh."
    assert re.match(query_re, "a.b.c.mesh.") is None
    assert re.match(query_re, "web.shop.mesh.example.") is None


# --------------------------------------------------------------------------- refusals


def test_a_foreign_block_for_the_zone_is_refused() -> None:
    text = corefiles.KUBEADM + "mesh:53 {\n    forward . 10.0.0.1\n}\n"
    with pytest.raises(cf.CorefileError, match=r"line 21: a server block for zone 'mesh'"):
        cf.prepare(text, MESH)


def test_a_foreign_block_for_the_zone_on_another_port_is_fine() -> None:
    text = corefiles.KUBEADM + "mesh:1053 {\n    forward . 10.0.0.1\n}\n"
    assert cf.cleanup(cf.prepare(text, MESH)) == text


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("a\n# simmesh:begin zone=mesh\nb\n", r"line 2: .* is never closed"),
        ("a\n# simmesh:end\n", r"line 2: '# simmesh:end' without"),
        (
            "# simmesh:begin zone=a\n# simmesh:begin zone=b\n# simmesh:end\n",
            r"line 2: .* inside the block opened at line 1",
        ),
    ],
)
def test_broken_markers_are_reported_not_guessed(text: str, message: str) -> None:
    with pytest.raises(cf.CorefileError, match=message):
        cf.cleanup(text)
    with pytest.raises(cf.CorefileError):
        cf.prepare(text, MESH)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"zone": "Mesh"}, "zone 'Mesh': expected a lowercase DNS name"),
        ({"zone": "mesh."}, "zone 'mesh.'"),
        ({"zone": "a b"}, "zone 'a b'"),
        ({"mesh_namespace": "a.b"}, "namespace 'a.b': expected a namespace name"),
        ({"cluster_domain": "cluster_local"}, "cluster domain 'cluster_local'"),
        ({"zone": "cluster.local"}, "outside the cluster domain"),
        ({"zone": "svc.cluster.local"}, "outside the cluster domain"),
    ],
)
def test_settings_are_validated(kwargs: dict[str, str], message: str) -> None:
    with pytest.raises(cf.CorefileError, match=re.escape(message)):
        cf.DnsSettings(**kwargs)


# --------------------------------------------------------------------------- reading


def test_server_keys() -> None:
    keys = [(zone, port) for zone, port, _ in cf.server_keys(corefiles.SEVERAL_BLOCKS)]
    assert keys == [
        (".", "53"),
        ("example.org", "53"),
        ("example.com", "53"),
        ("consul.local", "53"),
    ]
    assert [k[:2] for k in cf.server_keys(corefiles.SCHEME_AND_SNIPPET)] == [(".", "53")]
    assert [k[:2] for k in cf.server_keys(corefiles.COMMENTS)] == [(".", "53")]
    assert [k[:2] for k in cf.server_keys("a.org:53,\nb.org:53 {\n}\n")] == [
        ("a.org", "53"),
        ("b.org", "53"),
    ]


# --------------------------------------------------------------------------- any text at all

_ALPHABET = st.sampled_from([*"ab.:{}# \t\r\n53", "\r\n", "    ", ".:53 {", "}\n"])


@given(st.lists(_ALPHABET, max_size=80).map("".join))
def test_any_text_round_trips(text: str) -> None:
    prepared = cf.prepare(text, MESH)
    assert cf.cleanup(prepared) == text
    assert cf.prepare(prepared, MESH) == prepared
    assert cf.cleanup(text) == text


# --------------------------------------------------------------------------- AKS coredns-custom


def test_custom_prepare_and_cleanup_keep_other_keys() -> None:
    data = {
        "log.override": "log\n",
        "example.server": "example.org:53 {\n    forward . 1.1.1.1\n}\n",
    }
    prepared = cf.prepare_custom(data, MESH)
    assert set(prepared) == {*data, cf.CUSTOM_KEY}
    assert prepared[cf.CUSTOM_KEY].splitlines()[1] == "mesh:53 {"
    assert cf.prepare_custom(prepared, MESH) == prepared
    assert cf.cleanup_custom(prepared) == data
    assert cf.cleanup_custom(data) == data


def test_custom_on_an_empty_configmap() -> None:
    assert cf.cleanup_custom(cf.prepare_custom(None, MESH)) == {}
    assert cf.custom_state(None, MESH) is cf.BlockState.ABSENT
    assert cf.custom_state(cf.prepare_custom(None, MESH), MESH) is cf.BlockState.CURRENT
    assert cf.custom_state(cf.prepare_custom(None, OTHER), MESH) is cf.BlockState.STALE
