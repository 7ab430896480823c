"""The user tools behind ``python -m data``: stats, show, prepare, synth, and the faulty corpus
the bad-input tests and benchmarks use."""
