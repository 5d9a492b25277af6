"""The benchmark suite (``pytest --benchmark``) and its helpers, as a package.

Modules that also run as child processes are started with ``python -m benchmarks.<name>``
(with the repository root on PYTHONPATH, see ``firehose.subprocess_env``), so every import
here is a plain package import that mypy checks in the same run as the library.
"""
