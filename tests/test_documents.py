"""User YAML within limits, through libyaml's loader (used when PyYAML has it) and the pure
Python one: the same documents are refused with the same one-line errors by both."""

from __future__ import annotations

import pytest

from mesh import documents
from mesh.documents import DocumentError, load_yaml

BOMB = "a: &a [x, x, x, x, x, x, x, x, x, x]\n" + "".join(
    f"{chr(98 + i)}: &{chr(98 + i)} [{', '.join(['*' + chr(97 + i)] * 10)}]\n" for i in range(8)
)
BAD = [
    ("a: " + "[" * 150 + "]" * 150, "nested deeper than 100 levels"),
    ("a: " + "[" * 5000 + "]" * 5000, "nested deeper than 100 levels"),
    ("".join(" " * 2 * i + "-\n" for i in range(150)) + " " * 300 + "x\n", "line 101: nested"),
    (BOMB, "anchor bomb"),
    ("a: .nan", "NaN and infinite numbers are not accepted"),
    ("a: 1.0e+999", "NaN and infinite numbers are not accepted"),
    ("a: " + "9" * 5000, "digits is too long"),
    ("a: &x [*x]", "refers to its own anchor (a cycle)"),
]


@pytest.fixture(params=["libyaml", "python"])
def loader(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> str:
    if request.param == "libyaml":
        assert documents._CLoader is not None, "PyYAML was built without libyaml"
    else:
        monkeypatch.setattr(documents, "_CLoader", None)
    return str(request.param)


@pytest.mark.parametrize(("text", "message"), BAD)
def test_limits_hold_in_both_loaders(loader: str, text: str, message: str) -> None:
    with pytest.raises(DocumentError) as caught:
        load_yaml(text, name="f.yaml")
    assert message in str(caught.value) and "\n" not in str(caught.value)


def test_both_loaders_read_the_same_document(loader: str) -> None:
    text = "a: [1, 2.5, x]\nb: {c: true, d: null}\nanchor: &k {x: 1}\nalias: *k\n"
    assert load_yaml(text, name="f.yaml") == {
        "a": [1, 2.5, "x"],
        "b": {"c": True, "d": None},
        "anchor": {"x": 1},
        "alias": {"x": 1},
    }
