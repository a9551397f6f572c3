"""push/pull through fsspec: a local-path remote and a real S3 endpoint (moto's server on localhost).

A second store on this machine acts as another host (its own host name in the remote's ref log)."""

from __future__ import annotations

import json
import os
import socket
import threading
import time
import uuid

import pytest
import torch

from kdcli.store import Store
from kdcli.store import remote as remote_module


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.fixture(scope="module")
def s3_endpoint():
    """A real S3 protocol endpoint on localhost for this module, with test credentials in the env."""
    from moto.server import ThreadedMotoServer

    saved = {k: os.environ.get(k) for k in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_DEFAULT_REGION")}
    os.environ.update(AWS_ACCESS_KEY_ID="testing", AWS_SECRET_ACCESS_KEY="testing", AWS_DEFAULT_REGION="us-east-1")
    port = free_port()
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.stop()
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


@pytest.fixture(params=["path", "memory", "s3"])
def remote(request, tmp_path):
    """(url, storage options, fsspec filesystem) of an empty remote: a path, another fsspec protocol
    by name, and S3."""
    import fsspec

    if request.param == "path":
        return str(tmp_path / "remote"), {}, fsspec.filesystem("file")
    if request.param == "memory":
        return f"memory://kdcli-{uuid.uuid4().hex[:10]}/team", {}, fsspec.filesystem("memory")
    import s3fs

    endpoint = request.getfixturevalue("s3_endpoint")
    fs = s3fs.S3FileSystem(endpoint_url=endpoint, skip_instance_cache=True)
    bucket = f"kdcli-{uuid.uuid4().hex[:10]}"
    fs.mkdir(bucket)
    return f"s3://{bucket}/team", {"endpoint_url": endpoint}, fs


def populate(store: Store, offset: float = 0.0) -> dict[str, str]:
    teacher = store.put("model", {"w": torch.full((64, 64), 1.0 + offset)}, {"stage": "train-teacher", "parents": {}})
    student = store.put("model", {"w": torch.full((8,), 2.0 + offset)},
                        {"stage": "distill", "parents": {"teacher": teacher.id, "data": "d" * 64}})
    store.set_ref(f"teacher{offset:g}", teacher.id)
    store.add_tag("kd", student.id)
    store.record_run(f"{int(offset):064d}", "distill", student.id)
    return {"teacher": teacher.id, "student": student.id}


def test_push_pull_round_trip_and_only_missing_objects_move(tmp_path, remote):
    url, options, _ = remote
    here, there = Store(tmp_path / "here"), Store(tmp_path / "there")
    ids = populate(here)
    first = here.push(url, storage_options=options)
    assert sorted(first.objects) == sorted(ids.values()) and first.bytes > 16384 and not first.refused
    again = here.push(url, storage_options=options)
    assert again.objects == [] and again.present == 2 and again.updated == [] and again.bytes == 0

    pulled = there.pull(url, storage_options=options)
    assert sorted(pulled.objects) == sorted(ids.values()) and not pulled.refused and not pulled.conflicts
    assert set(there.ids()) == set(ids.values()) and there.check() == []
    assert there.refs() == here.refs() and there.tags() == here.tags()
    assert [e["artifact"] for e in there.runs()] == [ids["student"]]
    for artifact_id in ids.values():  # the volatile fields travel in the sidecar
        assert there.get(artifact_id).manifest == here.get(artifact_id).manifest
    assert there.pull(url, storage_options=options).objects == []


def test_pull_of_one_name_brings_its_parents_only(tmp_path, remote):
    url, options, _ = remote
    here = Store(tmp_path / "here")
    ids = populate(here)
    other = here.put("model", {"w": torch.zeros(3)}, {"stage": "x", "parents": {}}).id
    here.set_ref("student", ids["student"])
    here.push(url, storage_options=options)
    there = Store(tmp_path / "there")
    pulled = there.pull(url, ["student"], storage_options=options)
    assert sorted(pulled.objects) == sorted(ids.values()) and other not in there.ids()
    assert there.refs() == {"student": ids["student"]}


def test_a_corrupted_remote_object_is_refused(tmp_path, remote, make_cli):
    url, options, fs = remote
    here = Store(tmp_path / "here")
    ids = populate(here)
    here.push(url, storage_options=options)
    relative = remote_module._object_relative(ids["teacher"])
    target = remote_module.Remote(url, options).path(relative)
    raw = bytearray(fs.cat_file(target))
    raw[len(raw) // 2] ^= 0x01
    fs.pipe_file(target, bytes(raw))

    there = Store(tmp_path / "there")
    pulled = there.pull(url, storage_options=options)
    assert pulled.objects == [ids["student"]] and ids["teacher"] not in there.ids()
    (line,) = pulled.refused
    assert f"remote object {ids['teacher'][:12]} is corrupt" in line
    assert "teacher0" not in there.refs()  # a ref to a refused object is not taken
    assert list((there.root / "tmp").iterdir()) == []
    args = ["artifacts", "pull", url] + (["--endpoint-url", options["endpoint_url"]] if options else [])
    result = make_cli(tmp_path / "third")(*args)
    assert result.exit_code == 1 and result.stderr.strip().splitlines()[-1].startswith("error: 1 object(s) refused")


def test_two_writers_pushing_at_once_lose_nothing(tmp_path, remote, monkeypatch):
    url, options, _ = remote
    writers = [Store(tmp_path / "a"), Store(tmp_path / "b")]
    ids = [populate(store, offset) for store, offset in zip(writers, (0.0, 1.0))]
    for store, artifacts in zip(writers, ids):
        store.set_ref("shared", artifacts["student"])
    hosts = {id(writers[0]): "host-a", id(writers[1]): "host-b"}
    local = threading.local()
    monkeypatch.setattr(remote_module, "this_host", lambda: getattr(local, "host", "tester"))
    reports, start = [], threading.Barrier(2)

    def push(store):
        local.host = hosts[id(store)]
        start.wait()
        reports.append(store.push(url, storage_options=options))

    threads = [threading.Thread(target=push, args=(store,)) for store in writers]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert len(reports) == 2 and not any(r.refused for r in reports)

    merged = Store(tmp_path / "merged")
    pulled = merged.pull(url, storage_options=options)
    every = {i for artifacts in ids for i in artifacts.values()}
    assert set(merged.ids()) == every and merged.check() == []
    assert sorted(merged.tagged("kd")) == sorted(a["student"] for a in ids)
    assert sorted(e["artifact"] for e in merged.runs()) == sorted(a["student"] for a in ids)
    assert {"teacher0", "teacher1"} <= set(merged.refs())
    log = remote_module.Remote(url, options).ref_log()["shared"]
    # both updates are in the remote's log, or the one that lost the race was refused and said so
    conflicts = [c for r in reports for c in r.conflicts] + pulled.conflicts
    assert len(log) == 2 or any("ref shared" in c for c in conflicts)
    assert merged.resolve("shared") == log[-1]["id"]


def test_refs_move_only_forward_and_conflicts_are_reported(tmp_path, remote):
    url, options, _ = remote
    first, second = Store(tmp_path / "first"), Store(tmp_path / "second")
    old = populate(second, 5.0)
    second.set_ref("best", old["student"])
    time.sleep(0.01)
    new = populate(first, 6.0)
    first.set_ref("best", new["student"])
    first.push(url, storage_options=options)
    pushed = second.push(url, storage_options=options)  # its "best" is older than the remote's
    (conflict,) = pushed.conflicts
    assert conflict.startswith("ref best: the remote's") and "kept it" in conflict
    assert remote_module.Remote(url, options).ref_log()["best"][-1]["id"] == new["student"]
    pulled = second.pull(url, storage_options=options)  # the remote's is newer: taken, and said
    assert second.resolve("best") == new["student"]
    assert any(u.startswith("ref best:") for u in pulled.updated)
    second.set_ref("best", old["student"])  # now the local one is newer: kept on pull
    kept = second.pull(url, storage_options=options)
    assert second.resolve("best") == old["student"] and any("kept yours" in c for c in kept.conflicts)


def test_cli_push_pull_and_bad_remotes(tmp_path, make_cli, remote):
    url, options, _ = remote
    here = Store(tmp_path / "here")
    populate(here)
    extra = ["--endpoint-url", options["endpoint_url"]] if options else []
    pushed = make_cli(here.root)("artifacts", "push", url, *extra)
    assert pushed.exit_code == 0 and "pushed 2 object(s)" in pushed.stderr, pushed.stderr
    result = make_cli(tmp_path / "there")("artifacts", "pull", url, "teacher0", *extra, "--json")
    assert result.exit_code == 0 and len(json.loads(result.stdout)["objects"]) == 1
    missing = make_cli(tmp_path / "there")("artifacts", "pull", url, "nope", *extra)
    assert missing.exit_code == 2 and "neither a name nor an id" in missing.stderr
    assert missing.stderr.count("\n") == 1


def test_bad_remote_urls_are_one_line(tmp_path, make_cli):
    here = Store(tmp_path / "here")
    populate(here)
    bogus = make_cli(here.root)("artifacts", "push", "bogus-protocol://x")
    assert bogus.exit_code == 2 and bogus.stderr.count("\n") == 1 and "bogus-protocol" in bogus.stderr
    empty = make_cli(here.root)("artifacts", "pull", str(tmp_path / "nothing"))
    assert empty.exit_code == 1 and "no store at remote" in empty.stderr and empty.stderr.count("\n") == 1


def test_bench_rows_measure_a_push_and_an_empty_second_push(tmp_path):
    from bench.remote_bench import push_pull_rows

    rate, again = push_pull_rows(tmp_path, total_mib=1, n_objects=2)
    assert float(rate["a"]) > 0 and float(rate["b"]) > 0
    assert (again["a"], again["b"], again["met"]) == ("2", "0", True)


def test_push_clears_uploads_a_killed_writer_left(tmp_path):
    here = Store(tmp_path / "here")
    populate(here)
    remote = tmp_path / "remote"
    (remote / "tmp").mkdir(parents=True)
    left, fresh = remote / "tmp" / "left-by-a-kill", remote / "tmp" / "in-flight"
    for path in (left, fresh):
        path.write_bytes(b"half an object")
    old = time.time() - 2 * 3600
    os.utime(left, (old, old))
    here.push(str(remote))
    assert not left.exists() and fresh.exists()
