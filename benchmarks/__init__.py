"""Benchmark scenarios (`make bench`); not part of `make test`."""
