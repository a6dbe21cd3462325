"""Ensign's benchmarks: each one measures the daemon beside a bare baseline in the same run.

Run with `python -m bench` (full) or `python -m bench --quick` from the repository root.
"""
