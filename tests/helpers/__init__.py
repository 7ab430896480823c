"""Helpers shared by the test files (and the benchmark scripts): ``launch`` (the one way to start
an entry point or a torchrun helper, each launch on a free port), ``faults`` (the
fault-injecting launcher), ``files`` and ``benchmark_data`` (fixture builders), and the
``zero3_*`` scripts that run under ``torchrun``."""
