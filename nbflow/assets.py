"""Assets, as Prefect 3.9 names them: ``Asset``, ``AssetProperties``, ``materialize``, ``add_asset_metadata``.

An asset is a piece of data a task run produces or reads, named by a URI-like
key (``s3://bucket/data.csv``). ``@materialize(asset, ...)`` makes a task
that materializes assets (a :class:`~nbflow.tasks.MaterializingTask`);
``@task(asset_deps=[...])`` names the assets a task reads. Prefect sends these
to its server's lineage graph; nbflow has no server, so it checks them as
Prefect does and keeps them on the task, and keeps the metadata a run adds
(:func:`add_asset_metadata`) for :func:`materialization_metadata` to read.
"""

from __future__ import annotations

import re
import threading
import weakref
from collections.abc import Callable
from typing import TYPE_CHECKING, Annotated, Any, ClassVar, Optional

from pydantic import AfterValidator, BaseModel, ConfigDict, Field

from nbflow.context import current_task_run

if TYPE_CHECKING:
    from nbflow.records import TaskRun
    from nbflow.tasks import MaterializingTask

MAX_ASSET_KEY_LENGTH = 512
MAX_ASSET_DESCRIPTION_LENGTH = 2500
RESTRICTED_ASSET_CHARACTERS = "\n\r\t\0 #?&%\"'<>[]{}|\\^`"
_URI = re.compile(r"^[a-z0-9]+://")


def _valid_key(value: str) -> str:
    for char in RESTRICTED_ASSET_CHARACTERS:
        if char in value:
            raise ValueError(f"Asset key cannot contain {char!r}")
    if len(value) > MAX_ASSET_KEY_LENGTH:
        raise ValueError(f"Asset key cannot exceed {MAX_ASSET_KEY_LENGTH} characters")
    if not _URI.match(value):
        raise ValueError("Key must be a valid URI, e.g. storage://bucket/folder/asset.csv")
    return value


class AssetProperties(BaseModel):
    """What describes an asset: a readable name, a URL to view it, a description, its owners."""

    model_config: ClassVar[ConfigDict] = ConfigDict(frozen=True)

    name: Optional[str] = None
    url: Optional[str] = None
    description: Optional[str] = Field(default=None, max_length=MAX_ASSET_DESCRIPTION_LENGTH)
    owners: Optional[list[str]] = None


class Asset(BaseModel):
    """A piece of data named by a URI-like ``key`` (lowercase scheme, no spaces or ``#?&%"'<>[]{}|\\^```).

    Assets hash by key; two are equal when key and properties are.
    """

    model_config: ClassVar[ConfigDict] = ConfigDict(frozen=True)

    key: Annotated[str, AfterValidator(_valid_key)]
    properties: Optional[AssetProperties] = None

    def __repr__(self) -> str:
        return f"Asset(key={self.key!r})"

    def __hash__(self) -> int:
        return hash(self.key)

    def add_metadata(self, metadata: dict[str, Any]) -> None:
        """Add metadata to this asset's materialization by the running task run (see :func:`add_asset_metadata`)."""
        _add(self.key, metadata, "Unable add Asset metadata when not inside of an AssetContext")


def as_assets(values: Any) -> list[Any]:
    """Prefect's reading of an asset list: each string becomes ``Asset(key=...)`` (checked), anything else stays."""
    return [Asset(key=value) if isinstance(value, str) else value for value in values or ()]


# Metadata task runs added, by run: kept while the run record lives.
_metadata: weakref.WeakKeyDictionary[TaskRun, dict[str, dict[str, Any]]] = weakref.WeakKeyDictionary()
_lock = threading.Lock()


def add_asset_metadata(asset: str | Asset, metadata: dict[str, Any]) -> None:
    """Add ``metadata`` to the materialization of ``asset`` by the task run executing now.

    Only inside a task run (``RuntimeError`` elsewhere), and only for an asset
    its task materializes (``ValueError`` otherwise); later keys replace
    earlier ones. With the process, Dask or Ray runners, metadata a run adds
    stays in its worker.
    """
    key = asset if isinstance(asset, str) else asset.key
    _add(key, metadata, "Unable to call `add_asset_metadata` when not inside of an AssetContext")


def _add(key: str, metadata: dict[str, Any], outside: str) -> None:
    run = current_task_run()
    if run is None:
        raise RuntimeError(outside)
    if key not in {a.key for a in getattr(run.task, "assets", ()) if isinstance(a, Asset)}:
        raise ValueError("Can only add metadata to assets that are arguments to @materialize")
    with _lock:
        by_key = _metadata.setdefault(run, {})
        by_key[key] = {**by_key.get(key, {}), **metadata}


def materialization_metadata(run: TaskRun) -> dict[str, dict[str, Any]]:
    """The metadata ``run`` added to the assets it materialized, by asset key (a copy)."""
    with _lock:
        return {key: dict(value) for key, value in _metadata.get(run, {}).items()}


def materialize(*assets: str | Asset, by: str | None = None, **task_options: Any) -> Callable[[Callable], MaterializingTask]:
    """Decorator: a task that materializes ``assets`` (strings or :class:`Asset`), made ``by`` a tool (e.g. "dbt").

    ``task_options`` are those of ``@task``.
    """
    if not assets:
        raise TypeError("materialize requires at least one asset argument, e.g. `@materialize(asset)`")
    from nbflow.tasks import MaterializingTask

    def decorator(fn: Callable) -> MaterializingTask:
        return MaterializingTask(fn, assets=assets, materialized_by=by, **task_options)

    return decorator


__all__ = ["Asset", "AssetProperties", "add_asset_metadata", "as_assets", "materialization_metadata", "materialize"]
