"""Benchmarks (``make bench``): amsrepomirror against its peers (wget, ...) on a real nginx.

Not tests: nothing here asserts timings. Results go to ``docs/benchmarks.md``.
"""
