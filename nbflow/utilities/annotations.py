"""Argument annotations, where Prefect code imports them: ``from nbflow.utilities.annotations import quote``."""

from nbflow.annotations import BaseAnnotation, allow_failure, opaque, quote, unmapped
from nbflow.options import NotSet

__all__ = ["BaseAnnotation", "unmapped", "allow_failure", "quote", "opaque", "NotSet"]
