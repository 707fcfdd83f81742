"""The one rule for when to use Ray, and the fan-out helper."""

from __future__ import annotations

import json

import pytest

from convplat.cluster import fan_out, use_ray


def test_use_ray_rule(monkeypatch):
    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    assert use_ray("auto", 10, None, 10) and not use_ray("auto", 9, None, 10)
    assert use_ray("auto", 0, "ray://x:1", 10)
    assert use_ray("ray", 0, None, 10) and not use_ray("local", 99, "x", 10)
    monkeypatch.setenv("RAY_ADDRESS", "127.0.0.1:6379")
    assert use_ray("auto", 0, None, 10)


@pytest.mark.parametrize("in_flight", [None, 2])
def test_fan_out_returns_every_result_once(ray_session, in_flight):
    # A library function as the task: test modules are not importable in Ray's workers.
    jobs = ((i, (str(i),), {"parse_int": lambda s: s * 2}) for i in range(20))
    nodes: set[str] = set()
    got = dict(fan_out(json.loads, jobs, max_in_flight=in_flight, nodes=nodes))
    assert got == {i: str(i) * 2 for i in range(20)}
    assert nodes == {ray_session.get_runtime_context().get_node_id()}  # one local node


def test_fan_out_raises_a_task_s_user_error_as_itself(ray_session, tmp_path):
    from convplat.errors import DatasetError
    from convplat.pipeline.shardset import read_manifest

    with pytest.raises(DatasetError) as info:
        list(fan_out(read_manifest, [(0, (str(tmp_path / "none"),), {})]))
    assert "Traceback" not in str(info.value) and str(tmp_path) in str(info.value)
