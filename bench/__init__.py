"""Benchmark harness: direct vs meshed vs peer proxies, side by side in one run."""
