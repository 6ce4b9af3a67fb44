"""Assets as Prefect 3.9.1 has them (``prefect.assets``), without a server: what is checked and kept.

Each case was run on Prefect 3.9.1.
"""

from __future__ import annotations

import pydantic
import pytest

from nbflow import flow, task
from nbflow.assets import Asset, AssetProperties, add_asset_metadata, materialization_metadata, materialize
from nbflow.runs import last_flow_run
from nbflow.task_runners import ThreadPoolTaskRunner
from nbflow.tasks import MaterializingTask

pytestmark = [pytest.mark.parity, pytest.mark.timeout(30)]


@pytest.mark.parametrize("key", ["no-scheme", "S3://upper", "s3://a b", "s3://a#b", "s3://" + "x" * 600])
def test_an_asset_key_must_be_a_uri_with_a_lowercase_scheme_and_no_restricted_characters(key):
    with pytest.raises(pydantic.ValidationError):
        Asset(key=key)


def test_an_asset_is_frozen_hashes_by_key_and_shows_its_key():
    asset = Asset(key="s3://bucket/a.csv", properties=AssetProperties(name="A", owners=["me"]))
    assert repr(asset) == "Asset(key='s3://bucket/a.csv')"
    assert hash(asset) == hash(Asset(key="s3://bucket/a.csv"))
    assert asset != Asset(key="s3://bucket/a.csv")  # equal needs the same properties too
    assert asset.properties.owners == ["me"]
    with pytest.raises(pydantic.ValidationError):
        asset.key = "s3://other"  # type: ignore[misc]
    with pytest.raises(pydantic.ValidationError):
        AssetProperties(description="x" * 2501)


def test_asset_deps_take_strings_and_assets_and_keep_assets():
    @task(asset_deps=["s3://up/x", Asset(key="s3://up/y")])
    def reads():
        return 1

    assert reads.asset_deps == [Asset(key="s3://up/x"), Asset(key="s3://up/y")]
    assert reads.with_options(asset_deps=["s3://z"]).asset_deps == [Asset(key="s3://z")]
    assert reads.with_options().asset_deps == reads.asset_deps
    assert task(lambda: 1).asset_deps == []
    with pytest.raises(pydantic.ValidationError):
        task(asset_deps=["nope"])(lambda: 1)


def test_materialize_needs_an_asset():
    with pytest.raises(TypeError, match=r"^materialize requires at least one asset argument"):
        materialize()


def test_materialize_makes_a_materializing_task_with_its_assets_tool_and_options():
    @materialize("s3://bucket/out.csv", Asset(key="s3://bucket/o2"), by="pandas", retries=2)
    def make(x):
        return x * 2

    assert isinstance(make, MaterializingTask)
    assert make.assets == [Asset(key="s3://bucket/out.csv"), Asset(key="s3://bucket/o2")]
    assert (make.materialized_by, make.retries, make.name) == ("pandas", 2, "make")
    renamed = make.with_options(name="other")
    assert renamed.name == "other" and renamed.assets == make.assets and renamed.materialized_by == "pandas"
    assert make.with_options(assets=["s3://q"]).assets == [Asset(key="s3://q")]
    assert make(5) == 10  # runs outside a flow too

    @flow
    def f():
        return make(3), make.submit(4).result()

    assert f() == (6, 8)


def test_add_asset_metadata_is_kept_for_the_run_and_merged():
    out = Asset(key="s3://bucket/o2")

    @materialize("s3://bucket/out.csv", out)
    def make(x):
        add_asset_metadata("s3://bucket/out.csv", {"rows": x})
        add_asset_metadata(out, {"a": 1})
        out.add_metadata({"b": 2})
        return x

    @flow(task_runner=ThreadPoolTaskRunner(max_workers=2))
    def f():
        return make.submit(3).result()

    assert f() == 3
    run = last_flow_run().task_runs[0]
    assert materialization_metadata(run) == {"s3://bucket/out.csv": {"rows": 3}, "s3://bucket/o2": {"a": 1, "b": 2}}


def test_add_asset_metadata_only_for_assets_the_task_materializes_and_only_in_a_run():
    @materialize("s3://bucket/out.csv")
    def other_key():
        add_asset_metadata("s3://other", {"rows": 1})

    @task
    def plain():
        add_asset_metadata("s3://other", {"rows": 1})

    message = "^Can only add metadata to assets that are arguments to @materialize$"
    with pytest.raises(ValueError, match=message):
        other_key()
    with pytest.raises(ValueError, match=message):
        plain()
    with pytest.raises(RuntimeError, match="^Unable to call `add_asset_metadata` when not inside of an AssetContext$"):
        add_asset_metadata("s3://x", {})
    with pytest.raises(RuntimeError, match="^Unable add Asset metadata when not inside of an AssetContext$"):
        Asset(key="s3://x").add_metadata({})
