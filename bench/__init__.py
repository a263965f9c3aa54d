"""Benchmarks run on demand (make bench): each compares layerhub with its peer tool."""
