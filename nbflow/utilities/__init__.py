"""Prefect's ``prefect.utilities`` modules that user code imports: ``annotations``."""
