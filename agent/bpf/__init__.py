"""The only place that talks to the kernel's BPF and tc APIs (bcc, pyroute2 tc, libbpf)."""
