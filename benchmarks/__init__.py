"""Speed benchmarks (issue 7): ``python -m benchmarks --help``. Not part of ``make test``."""
