"""The demo shop: small services that the lab runs as workloads for the mesh to carry."""
