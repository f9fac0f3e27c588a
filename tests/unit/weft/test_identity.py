"""SPIFFE identity parsing and formatting."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from weft.identity import Identity, InvalidIdentityError

NAMES = st.from_regex(r"\A[a-z0-9]([a-z0-9\-]{0,20}[a-z0-9])?\Z")


def test_parse_round_trips_a_spiffe_id() -> None:
    uri = "spiffe://cluster.local/ns/shop/sa/frontend"
    identity = Identity.parse(uri)
    assert identity == Identity("cluster.local", "shop", "frontend")
    assert str(identity) == uri


@pytest.mark.parametrize(
    ("uri", "complaint"),
    [
        ("http://cluster.local/ns/a/sa/b", "does not start with"),
        ("spiffe://cluster.local/ns/a", "is not of the form"),
        ("spiffe://cluster.local/sa/b/ns/a", "is not of the form"),
        ("spiffe://Cluster.Local/ns/a/sa/b", "trust domain"),
        ("spiffe://cluster.local/ns/A_B/sa/b", "namespace"),
        ("spiffe://cluster.local/ns/a/sa/-b", "service account"),
    ],
)
def test_parse_rejects_malformed_ids_naming_the_part(uri: str, complaint: str) -> None:
    with pytest.raises(InvalidIdentityError, match=complaint):
        Identity.parse(uri)


@given(ns=NAMES, sa=NAMES)
def test_any_valid_identity_survives_format_then_parse(ns: str, sa: str) -> None:
    identity = Identity.for_workload(ns, sa)
    assert Identity.parse(identity.uri) == identity
