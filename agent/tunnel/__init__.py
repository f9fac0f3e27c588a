"""Tunnels from this agent to peers: HBONE pools and the inbound listener."""
