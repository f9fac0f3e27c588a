"""weft.model: the behaviour the domain types carry (selection, opt-in, keys)."""

from __future__ import annotations

from ipaddress import IPv4Address

from weft.model import (
    DataplaneMode,
    Kind,
    Metadata,
    Namespace,
    Operation,
    Service,
    ServicePort,
    Workload,
    key_of,
)


def workload(
    ns: str = "shop",
    labels: dict[str, str] | None = None,
    meta_labels: dict[str, str] | None = None,
) -> Workload:
    return Workload(
        Metadata("w", ns, labels=meta_labels or {}),
        IPv4Address("10.1.1.1"),
        "n1",
        labels=labels or {},
    )


def service(selector: dict[str, str], ns: str = "shop") -> Service:
    return Service(Metadata("s", ns), IPv4Address("10.96.0.1"), (ServicePort(80, 8080),), selector)


def test_service_selects_workloads_by_spec_or_metadata_labels_in_its_namespace() -> None:
    assert service({"app": "a"}).selects(workload(labels={"app": "a"}))
    assert service({"app": "a"}).selects(workload(meta_labels={"app": "a"}))
    assert not service({"app": "a"}, ns="other").selects(workload(labels={"app": "a"}))
    assert not service({"app": "a", "v": "2"}).selects(workload(labels={"app": "a"}))


def test_service_without_selector_selects_nothing() -> None:
    assert not service({}).selects(workload(labels={"app": "a"}))


def test_namespace_is_meshed_only_with_the_ambient_label() -> None:
    assert (
        Namespace(Metadata("a", "", {"weft.io/dataplane-mode": "ambient"})).dataplane_mode
        is DataplaneMode.AMBIENT
    )
    assert Namespace(Metadata("a")).dataplane_mode is DataplaneMode.NONE


def test_workload_opts_out_with_dataplane_mode_none() -> None:
    assert workload(meta_labels={"weft.io/dataplane-mode": "none"}).meshed_opt_out
    assert not workload().meshed_opt_out


def test_operation_with_paths_or_methods_needs_a_waypoint() -> None:
    assert Operation(paths=("/a",)).is_l7
    assert Operation(not_methods=("GET",)).is_l7
    assert not Operation(ports=(80,)).is_l7


def test_key_of_names_kind_namespace_and_name() -> None:
    key = key_of(workload())
    assert (key.kind, key.namespace, key.name) == (Kind.WORKLOAD, "shop", "w")
    assert str(key) == "Workload/shop/w"
