"""Workload certificates: keys, CSRs, renewal and rotation."""
