"""Node agent: captures workload traffic with eBPF and carries it in HBONE mTLS tunnels."""
