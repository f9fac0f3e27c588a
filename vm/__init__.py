"""Lab descriptions and the machinery that builds them (network namespaces, Vagrant)."""
