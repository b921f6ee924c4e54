"""Benchmark and result-table scripts (run as ``python benchmarks/<script>.py``; tests import them as
``benchmarks.<script>`` with the repository root on the path, see ``[tool:pytest] pythonpath``)."""
