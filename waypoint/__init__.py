"""Waypoint: the shared L7 proxy for namespaces and services that opt in."""
