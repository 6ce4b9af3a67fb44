"""Helpers for testing code that uses nbflow: ``from nbflow.testing.utilities import prefect_test_harness``."""
