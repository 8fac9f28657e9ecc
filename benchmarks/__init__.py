"""Speed and accuracy measurements, each run from the repository root as
`python -m benchmarks.<name>` (its docstring says what it measures and its sizes).

Nothing here is a pass/fail test: targets are data beside each benchmark, reported, not
asserted; tests/test_benchmarks.py runs each at its smoke size so the code keeps working.
"""
