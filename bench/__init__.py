"""nbflow benchmarks: ``python -m bench NAME [args]`` (not timed tests)."""
