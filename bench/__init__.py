"""ftml benchmarks: ``python -m bench [NAME...] [--quick]`` runs ``bench/bench_<NAME>.py``."""
