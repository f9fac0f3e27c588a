from __future__ import annotations

from ipaddress import IPv4Address

from agent.tunnel.delivery import ROUTE_TABLE, route_commands, rule_command


def test_rule_sends_only_tcp_to_the_hbone_port_to_the_delivery_table() -> None:
    assert rule_command(15008) == [
        "ip", "rule", "add", "priority", "1500", "ipproto", "tcp", "dport", "15008",
        "lookup", str(ROUTE_TABLE),
    ]  # fmt: skip


def test_routes_are_added_for_new_workloads_and_removed_for_gone_ones() -> None:
    commands = route_commands([IPv4Address("10.88.1.3")], [IPv4Address("10.88.1.9")])
    assert commands == [
        ["ip", "route", "replace", "local", "10.88.1.3/32", "dev", "lo", "table", "15008"],
        ["ip", "route", "del", "local", "10.88.1.9/32", "dev", "lo", "table", "15008"],
    ]
