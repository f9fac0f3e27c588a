from __future__ import annotations

from ipaddress import IPv4Address

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from agent.admin import parse_request_line
from agent.inbound import baggage_workload, forwarded_for, split_authority
from weft.identity import Identity

FRONTEND = Identity.parse("spiffe://cluster.local/ns/shop/sa/frontend")


def test_forwarded_for_reads_rfc7239_for_with_or_without_quotes_and_port() -> None:
    assert forwarded_for((("forwarded", "for=10.88.1.2"),)) == IPv4Address("10.88.1.2")
    assert forwarded_for((("Forwarded", 'proto=tcp; for="10.88.1.2:5555"'),)) == IPv4Address(
        "10.88.1.2"
    )
    assert forwarded_for((("forwarded", "for=unknown"),)) is None
    assert forwarded_for((("baggage", "for=10.0.0.1"),)) is None


def test_baggage_names_the_source_workload_only_in_the_peers_own_namespace() -> None:
    baggage = "k8s.namespace.name=shop,k8s.pod.name=frontend-1;prop=x"
    assert baggage_workload((("baggage", baggage),), FRONTEND) == "frontend-1"
    deployment = "k8s.deployment.name=frontend, k8s.namespace.name=shop"
    assert baggage_workload((("Baggage", deployment),), FRONTEND) == "frontend"
    # A peer cannot name a workload of a namespace its certificate does not prove.
    other = "k8s.namespace.name=payments,k8s.pod.name=ledger"
    assert baggage_workload((("baggage", other),), FRONTEND) == ""
    assert baggage_workload((("forwarded", "for=10.0.0.1"),), FRONTEND) == ""
    assert baggage_workload((("baggage", "garbage,,=;"),), FRONTEND) == ""


def test_authority_must_be_ip_and_port() -> None:
    assert split_authority("10.88.2.2:8080") == (IPv4Address("10.88.2.2"), 8080)
    for bad in (
        "catalog:8080",
        "10.88.2.2",
        "10.88.2.2:http",
        ":80",
        "10.0.0.1:0",
        "10.0.0.1:70000",
    ):
        with pytest.raises(LookupError):
            split_authority(bad)


@settings(deadline=None)  # time does not matter here; a loaded CI host is slow
@given(st.text(max_size=200))
def test_any_forwarded_header_value_parses_or_is_ignored(value: str) -> None:
    result = forwarded_for((("forwarded", value),))
    assert result is None or isinstance(result, IPv4Address)


@settings(deadline=None)  # time does not matter here; a loaded CI host is slow
@given(st.text(max_size=100))
def test_any_authority_is_split_or_refused_with_lookup_error(authority: str) -> None:
    try:
        address, port = split_authority(authority)
    except LookupError:
        return
    assert isinstance(address, IPv4Address)
    assert 0 < port < 65536


@settings(deadline=None)  # time does not matter here; a loaded CI host is slow
@given(st.binary(max_size=300))
def test_any_request_head_parses_or_raises_value_error(head: bytes) -> None:
    try:
        method, path, query = parse_request_line(head)
    except ValueError:
        return
    assert isinstance(method, str)
    assert isinstance(path, str)
    assert isinstance(query, dict)
