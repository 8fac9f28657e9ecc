"""Builders the tests and the benchmarks share: throwaway project copies and tiny archives in
the official CIFAR layout. Not installed with the package: they copy this checkout."""
