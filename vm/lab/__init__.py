"""The network-namespace lab: nodes, workloads and the fabric on one machine."""
