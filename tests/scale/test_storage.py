"""Artifacts in a real S3 server (SeaweedFS): folders staged up with their completion marker last,
staged down through a partial folder into the host's cache, never taken whole when cut short."""
from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from nexus.errors import NexusError

pytestmark = pytest.mark.scale


def _folder(root: Path, files: dict[str, bytes]) -> Path:
    for rel, data in files.items():
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_bytes(data)
    return root


def _bucket_keys(s3, prefix: str) -> list[str]:
    from django.conf import settings

    location = settings.NEXUS_STORAGE_OPTIONS["location"]
    pages = s3.client().get_paginator("list_objects_v2").paginate(Bucket="nexus", Prefix=f"{location}/{prefix}")
    return sorted(item["Key"][len(location) + 1:] for page in pages for item in page.get("Contents", []))


def test_a_folder_goes_up_with_its_marker_last_and_comes_down_whole_on_another_host(remote_storage, settings, tmp_path):
    from nexus.storage import MARKER, folder_manifest, is_remote, stage_down, stage_up

    assert is_remote()
    big = os.urandom(70 * 1024 * 1024)  # above the multipart threshold: sent and fetched in parts
    source = _folder(tmp_path / "src", {"adapter_config.json": b'{"r": 8}', "weights/a.bin": big, "b.txt": b"x" * 10})
    stage_up(source, "adapters/team-1/a-v1")
    keys = _bucket_keys(remote_storage, "adapters/team-1/a-v1/")
    assert keys == sorted(["adapters/team-1/a-v1/adapter_config.json", "adapters/team-1/a-v1/weights/a.bin",
                           "adapters/team-1/a-v1/b.txt", f"adapters/team-1/a-v1/{MARKER}"])
    manifest = folder_manifest("adapters/team-1/a-v1")
    assert manifest["files"] == {"adapter_config.json": 8, "b.txt": 10, "weights/a.bin": len(big)}

    settings.NEXUS_CACHE_DIR = tmp_path / "other-host-cache"
    staged = stage_down("adapters/team-1/a-v1")
    assert staged.is_relative_to(tmp_path / "other-host-cache")
    assert (staged / "weights/a.bin").read_bytes() == big and (staged / "adapter_config.json").read_bytes() == b'{"r": 8}'
    assert not [p for p in staged.parent.iterdir() if ".partial-" in p.name]
    # a second stage is a cache hit: the data objects are not read again (delete one to prove it)
    remote_storage.client().delete_object(Bucket="nexus", Key=f"{settings.NEXUS_STORAGE_OPTIONS['location']}/adapters/team-1/a-v1/b.txt")
    assert stage_down("adapters/team-1/a-v1") == staged and (staged / "b.txt").read_bytes() == b"x" * 10


def test_a_folder_whose_upload_was_cut_short_is_never_taken_for_a_whole_one(remote_storage, tmp_path):
    from django.core.files.base import ContentFile
    from django.core.files.storage import default_storage

    from nexus.storage import complete_folders, folder_manifest, stage_down, stage_up

    # what a worker killed halfway through an upload leaves: some files, no marker
    default_storage.save("jobs/j/checkpoints/checkpoint-4/adapter_model.safetensors", ContentFile(b"half"))
    stage_up(_folder(tmp_path / "c2", {"trainer_state.json": b"{}"}), "jobs/j/checkpoints/checkpoint-2",
             summary={"step": 2})
    assert folder_manifest("jobs/j/checkpoints/checkpoint-4") is None
    assert list(complete_folders("jobs/j/checkpoints")) == ["checkpoint-2"]
    with pytest.raises(NexusError, match="not a complete folder in the object store"):
        stage_down("jobs/j/checkpoints/checkpoint-4")
    # uploading again over a complete folder: it stops being complete before its files change
    stage_up(_folder(tmp_path / "c2b", {"trainer_state.json": b'{"v": 2}'}), "jobs/j/checkpoints/checkpoint-2")
    assert json.loads(stage_down("jobs/j/checkpoints/checkpoint-2").joinpath("trainer_state.json").read_text()) == {"v": 2}


def test_a_download_that_fails_leaves_neither_a_partial_nor_a_wrong_folder(remote_storage, settings, tmp_path):
    from nexus.storage import stage_down, stage_up

    stage_up(_folder(tmp_path / "m", {"config.json": b"{}", "model.bin": b"0" * 100}), "models/m/hf")
    # the store lost a file the marker lists (an operator's mistake, a bucket policy): the stage fails
    remote_storage.client().delete_object(
        Bucket="nexus", Key=f"{settings.NEXUS_STORAGE_OPTIONS['location']}/models/m/hf/model.bin")
    with pytest.raises(Exception):
        stage_down("models/m/hf")
    cache = Path(settings.NEXUS_CACHE_DIR) / "store" / "models" / "m"
    assert not (cache / "hf").exists()
    assert not [p for p in cache.iterdir() if ".partial-" in p.name]


def test_a_model_staged_without_its_weights_still_knows_their_shapes(remote_storage, demo_model_files, settings):
    from nexus.modelfiles import first_layer_linears, parameter_count
    from nexus.storage import model_folder, stage_up

    hf_dir = Path(demo_model_files[0])
    stage_up(hf_dir, "models/demo/hf")
    meta = model_folder("models/demo/hf", weights=False)
    assert not list(meta.glob("*.safetensors")) and (meta / "config.json").is_file() and (meta / "tokenizer.json").is_file()
    assert parameter_count(meta) == parameter_count(hf_dir)
    assert first_layer_linears(meta) == first_layer_linears(hf_dir)


def test_a_single_file_is_cached_by_its_etag_and_fetched_again_when_replaced(remote_storage, tmp_path):
    from nexus.storage import stage_file, storage_save_file

    src = tmp_path / "m.gguf"
    src.write_bytes(b"GGUF" + b"1" * 100)
    storage_save_file("exports/e/m.gguf", src)
    first = stage_file("exports/e/m.gguf")
    assert first.read_bytes() == src.read_bytes()
    src.write_bytes(b"GGUF" + b"2" * 100)
    storage_save_file("exports/e/m.gguf", src)
    assert stage_file("exports/e/m.gguf").read_bytes() == b"GGUF" + b"2" * 100
    with pytest.raises(NexusError, match="not in the object store"):
        stage_file("exports/e/missing.gguf")


def test_deleting_a_folder_removes_every_object(remote_storage, tmp_path):
    from nexus.storage import folder_manifest, stage_up, storage_delete_prefix

    stage_up(_folder(tmp_path / "d", {f"f{i}.txt": b"." for i in range(5)}), "adapters/x")
    storage_delete_prefix("adapters/x")
    assert folder_manifest("adapters/x") is None and _bucket_keys(remote_storage, "adapters/x") == []


@pytest.mark.parametrize("url, error", [
    ("ftp://host/bucket", "must be s3://bucket"),
    ("s3+http://k:s@127.0.0.1:8333/", "names no bucket"),
])
def test_a_bad_storage_url_is_refused_with_what_is_wrong(url, error):
    from nexus.settings.env import parse_storage_url

    with pytest.raises(ValueError, match=error):
        parse_storage_url(url)


def test_storage_urls_of_both_forms(monkeypatch):
    from nexus.settings.env import parse_storage_url

    options = parse_storage_url("s3+https://AK%2F1:se%40cret@store.example:9000/artifacts/site-a")
    assert (options["endpoint_url"], options["bucket_name"], options["location"]) == (
        "https://store.example:9000", "artifacts", "site-a")
    assert (options["access_key"], options["secret_key"]) == ("AK/1", "se@cret")
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "env-key")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "env-secret")
    monkeypatch.setenv("AWS_S3_ENDPOINT_URL", "http://10.0.0.5:8333")
    options = parse_storage_url("s3://bucket")
    assert (options["endpoint_url"], options["bucket_name"], options["access_key"]) == ("http://10.0.0.5:8333", "bucket", "env-key")
    assert parse_storage_url("") is None


def test_a_benchmark_imported_on_one_host_is_read_on_another_from_the_store(remote_storage, settings, tmp_path):
    from django.core.management import call_command

    from evaluation_app.benchmarks.services import data_dir
    from evaluation_app.engine.suites import installed, load_items, suite_get
    from tests.evaluation_app.test_engine_suites import hellaswag_row, write_jsonl

    settings.NEXUS_DATA_DIR = str(tmp_path / "importing-host")
    call_command("nexus_import_benchmark", "hellaswag",
                 str(write_jsonl(tmp_path / "hellaswag_val.jsonl", [hellaswag_row(1), hellaswag_row(2)])))
    assert not (tmp_path / "importing-host" / "benchmarks").exists()  # not a host's folder: the store
    settings.NEXUS_CACHE_DIR = tmp_path / "worker-host-cache"
    root = data_dir()
    assert root.is_relative_to(tmp_path / "worker-host-cache") and installed(suite_get("hellaswag"), root)
    assert [i["id"] for i in load_items(suite_get("hellaswag"), root)] == ["hellaswag-1", "hellaswag-2"]
