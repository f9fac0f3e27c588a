"""Outbound and inbound capture: turning captured sockets into mesh connections."""
