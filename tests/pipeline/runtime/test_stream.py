"""The streaming loader: shard URLs over loopback HTTP, pipe: commands and paths; disjoint complete ranks, the
same stream for any number of workers, exact resume, checksums and retries."""
import json
import shutil

import numpy as np
import pytest
import torch

from data_prep.config import ConfigError, from_dict, save_resolved
from data_prep.prepare import prepare
from data_prep.tokenizers import load_tokenizer
from pipeline.config import Config, DataConfig, ModelConfig
from pipeline.measure.plots import read_metrics
from pipeline.runtime import urls
from pipeline.runtime.data import TokenLoader, TokenShards, loader_from_config
from pipeline.runtime.dataset import DataError
from pipeline.runtime.stream import StreamLoader, assign, buffer_order
from pipeline.stages.convert import convert
from launch.bench.bench_data import http_server
from tests.conftest import run_killed_and_resumed, tiny_prepare_config
from tests.pipeline.runtime.test_data import all_batches
from tests.pipeline.stages.test_pretrain import settings


@pytest.fixture(scope="module")
def many_shards(tmp_path_factory):
    """The tiny corpus in about 20 train shards of unequal size."""
    out = tmp_path_factory.mktemp("stream") / "data"
    prepare(tiny_prepare_config(out, shard_mb=0.01), log=lambda _: None)
    return out


@pytest.fixture(scope="module")
def served(many_shards):
    """``python -m http.server`` on 127.0.0.1 serving the dataset's parent; yields the dataset's base URL."""
    with http_server(many_shards.parent) as base:
        yield f"{base}/{many_shards.name}"


def test_buffer_order_by_hand():
    assert buffer_order(5, 0, np.random.default_rng(0)).tolist() == [0, 1, 2, 3, 4]
    draws = np.random.default_rng(3)
    j1, j2 = draws.integers(0, 2, size=2).tolist()
    slots = [0, 1]
    expected = [slots[j1]]
    slots[j1] = 2
    expected.append(slots[j2])
    slots[j2] = 3
    expected += draws.permutation(np.array(slots)).tolist()
    assert buffer_order(4, 2, np.random.default_rng(3)).tolist() == expected


@pytest.mark.parametrize("n,k", [(50, 7), (50, 50), (50, 80), (1000, 10)])
def test_buffer_order_is_a_permutation_that_holds_at_most_k_back(n, k):
    out = buffer_order(n, k, np.random.default_rng(n + k))
    assert sorted(out.tolist()) == list(range(n))
    assert all(out[i] < k + i for i in range(n - min(k, n)))  # read before position K + i


def test_assign_gives_each_shard_to_the_rank_with_fewest_sequences():
    counts = np.array([5, 3, 3, 2, 1])
    assert assign(counts, np.arange(5), 2) == [[0, 3], [1, 2, 4]]
    assert assign(counts, np.array([4, 3, 2, 1, 0]), 3) == [[4, 1], [3, 0], [2]]


def test_two_ranks_two_workers_over_http_read_disjoint_complete_data(many_shards, served):
    shards, B = TokenShards(many_shards, "train"), 4
    loaders = [StreamLoader(served, "train", B, rank=r, world_size=2, seed=5, num_workers=2, buffer=30)
               for r in range(2)]
    per_rank = [all_batches(loader) for loader in loaders]
    steps = len(loaders[0])
    assert [len(b) for b in per_rank] == [steps, steps] and steps == len(loaders[1])
    owned = [loader.plan(0)[0] for loader in loaders]
    assert sorted(owned[0] + owned[1]) == list(range(len(shards.paths)))  # every shard, to one rank
    dropped = []
    for rank, batches in enumerate(per_rank):
        seen = [int(i) for idx, _ in batches for i in idx]
        mine = [i for s in owned[rank] for i in range(shards.starts[s], shards.starts[s + 1])]
        assert len(seen) == len(set(seen)) == steps * B and set(seen) <= set(mine)
        dropped.append(len(mine) - len(seen))
        for idx, tokens in batches:
            assert torch.equal(tokens, torch.from_numpy(shards.read(idx.tolist())).long())
    # the smaller share loses less than a batch, the larger one also what balancing by whole shards left over
    largest = int(np.diff(shards.starts).max())
    assert min(dropped) < B and max(dropped) < B + largest
    first, second = ({int(i) for idx, _ in batches for i in idx} for batches in per_rank)
    assert not first & second


def test_a_split_with_fewer_shards_than_ranks_is_shared_sequence_by_sequence(many_shards):
    shards = TokenShards(many_shards, "val")
    ranks = len(shards.paths) + 1
    loaders = [StreamLoader(str(many_shards), "val", 2, rank=r, world_size=ranks, shuffle=False) for r in range(ranks)]
    seen = [[int(i) for idx, _ in all_batches(loader) for i in idx] for loader in loaders]
    steps = len(shards) // ranks // 2
    assert steps > 0 and all(len(s) == 2 * steps for s in seen)
    assert seen[1] == list(range(1, len(shards), ranks))[: 2 * steps]  # rank r: every W-th sequence from r
    assert len(set(sum(seen, []))) == ranks * 2 * steps  # disjoint


def test_the_stream_is_the_same_for_any_workers_and_transport(many_shards, served):
    def batches(location, workers):
        return all_batches(StreamLoader(location, "train", 3, rank=1, world_size=2, seed=2, num_workers=workers,
                                        buffer=25))

    reference = batches(str(many_shards), 0)
    for location, workers in ((served, 2), (f"pipe:cat {many_shards}/{{}}", 1), (f"file://{many_shards}", 2)):
        other = batches(location, workers)
        assert len(other) == len(reference)
        assert all(torch.equal(a[0], b[0]) and torch.equal(a[1], b[1]) for a, b in zip(reference, other))
    unshuffled = all_batches(StreamLoader(str(many_shards), "val", 2, shuffle=False))
    assert torch.cat([i for i, _ in unshuffled]).tolist() == list(range(2 * len(unshuffled)))


@pytest.mark.parametrize("stop", [0, 5, "end of epoch"])
def test_resume_mid_epoch_yields_exactly_the_remaining_stream(many_shards, served, stop):
    def make(workers=0):
        return StreamLoader(served, "train", 4, rank=0, world_size=2, seed=9, num_workers=workers, buffer=40)

    reference = make()
    steps = len(reference)
    stream = all_batches(reference) + all_batches(reference)  # two epochs, uninterrupted
    first = make()
    consumed = all_batches(first, steps if stop == "end of epoch" else stop)
    state = json.loads(json.dumps(first.state_dict()))
    resumed = make(workers=2)
    resumed.load_state_dict(state)
    joined = consumed + all_batches(resumed)
    if resumed.epoch == 0:
        joined += all_batches(resumed)  # the next epoch goes on as before
    assert resumed.epoch == 1 and len(joined) == len(stream) > steps
    assert all(torch.equal(a[0], b[0]) and torch.equal(a[1], b[1]) for a, b in zip(joined, stream))
    assert not torch.equal(stream[0][0], stream[steps][0])  # the next epoch has another order


def test_resume_with_other_settings_or_from_the_local_loader_is_refused(many_shards):
    state = StreamLoader(str(many_shards), "train", 4, buffer=10).state_dict()
    with pytest.raises(DataError, match="buffer 10 -> 20"):
        StreamLoader(str(many_shards), "train", 4, buffer=20).load_state_dict(state)
    with pytest.raises(DataError, match="source local -> stream"):
        StreamLoader(str(many_shards), "train", 4).load_state_dict(TokenLoader(many_shards, "train", 4).state_dict())
    with pytest.raises(DataError, match="source stream -> local"):
        TokenLoader(many_shards, "train", 4).load_state_dict(StreamLoader(str(many_shards), "train", 4).state_dict())


def test_a_changed_missing_or_flaky_shard(many_shards, served, tmp_path, monkeypatch):
    monkeypatch.setattr(urls, "RETRY_DELAY_S", 0.01)
    copy = tmp_path / "data"
    shutil.copytree(many_shards, copy)
    flipped = bytearray((copy / "train-00003.tar").read_bytes())
    flipped[700] ^= 1
    (copy / "train-00003.tar").write_bytes(bytes(flipped))
    loader = StreamLoader(f"pipe:cat {copy}/{{}}", "train", 4, shuffle=False, retries=2)
    with pytest.raises(DataError, match=r"shard train-00003.tar of split 'train': pipe:cat .*train-00003.tar: "
                                        r"sha256 .* does not match the manifest's .* after 3 attempts"):
        all_batches(loader)
    with pytest.raises(DataError, match="train-00003.tar: sha256 .* does not match"):
        StreamLoader(str(copy), "train", 4, shuffle=False).read_shard(3)  # a local path: no retry
    (copy / "train-00003.tar").write_bytes(bytes(flipped[:1024]))  # a truncated download
    with pytest.raises(DataError, match=r"train-00003.tar: sha256 \S+ of 1,024 bytes does not match"):
        loader.read_shard(3)
    (copy / "train-00003.tar").unlink()
    with pytest.raises(DataError, match=r"train-00003.tar: unreadable \(OSError: .*exit 1.* after 3 attempts"):
        loader.read_shard(3)
    # a command that fails on its first attempt and works on the next
    flag = tmp_path / "flag"
    flaky = f"pipe:if [ -e {flag} ]; then cat {many_shards}/{{}}; else touch {flag}; exit 1; fi"
    local = TokenShards(many_shards, "train")
    assert np.array_equal(StreamLoader(flaky, "train", 4, retries=1).read_shard(0),
                          local.read(list(range(local.starts[1]))))
    with pytest.raises(DataError, match="cannot read the dataset's manifest: http.*/nowhere/manifest.json"):
        StreamLoader(served.rsplit("/", 1)[0] + "/nowhere", "train", 4, retries=0)
    with pytest.raises(DataError, match=r"manifest: http://127.0.0.1:9/data/manifest.json: unreadable .*exit 7"):
        StreamLoader("http://127.0.0.1:9/data", "train", 4, retries=0)  # nothing listens on port 9


def test_data_source_config():
    assert DataConfig(path="http://host/data").streaming and DataConfig(path="pipe:cat d/{}").streaming
    assert not DataConfig(path="/data").streaming and DataConfig(path="/data", source="stream").streaming
    with pytest.raises(ConfigError, match="needs {} where each file name goes"):
        DataConfig(path="pipe:aws s3 cp s3://b/data -").validate()
    with pytest.raises(ConfigError, match="is a URL; data.source: local reads a directory"):
        DataConfig(path="https://host/data", source="local").validate()


def test_loader_from_config_streams_a_url(many_shards, served):
    cfg = Config(data=DataConfig(path=served, batch_size=3, shuffle_buffer=11),
                 model=ModelConfig(seq_len=64, vocab_size=500))
    loader = loader_from_config(cfg, "train", rank=0, world_size=1)
    assert isinstance(loader, StreamLoader) and loader.buffer == 11
    assert next(iter(loader))["input_ids"].shape == (3, 64)
    with pytest.raises(DataError, match="differs from model.seq_len 32"):
        loader_from_config(Config(data=cfg.data, model=ModelConfig(seq_len=32, vocab_size=500)), "train", 0, 1)


@pytest.mark.distributed
def test_pretraining_killed_mid_stream_resumes_to_the_same_losses(many_shards, served, tmp_path):
    paths = {}
    for name in ("reference", "killed"):
        cfg = from_dict(Config, settings(many_shards, tmp_path / name, train__max_steps=24, train__checkpoint_every=4,
                                         train__eval_every=12, data__path=served, data__shuffle_buffer=50))
        paths[name] = save_resolved(cfg, tmp_path, f"{name}.yaml")
    run_killed_and_resumed(paths["reference"], paths["killed"], tmp_path / "killed")
    ref, resumed = (read_metrics(tmp_path / name / "metrics.jsonl") for name in ("reference", "killed"))
    for step in range(5, 25):
        assert resumed[step]["train/loss_nats"] == ref[step]["train/loss_nats"], step
    assert resumed[24]["val/nelbo_nats"] == ref[24]["val/nelbo_nats"]
    # the checkpoint's data.path is the URL: conversion fetches the tokenizer from it into the bundle
    convert(tmp_path / "killed", tmp_path / "bundle", log=lambda _: None)
    assert load_tokenizer(tmp_path / "bundle" / "tokenizer").fingerprint == \
        load_tokenizer(many_shards / "tokenizer").fingerprint


def test_a_streamed_shard_with_an_id_outside_the_vocabulary_is_named(tiny_data, tmp_path):
    """A shard prepared wrongly (its sha256 matches the manifest): the id is caught when it is decoded."""
    import hashlib

    copy = tmp_path / "data"
    shutil.copytree(tiny_data, copy)
    shards = TokenShards(copy, "train")
    data = bytearray(shards.paths[0].read_bytes())
    data[2 * shards.stride + 512 + shards.header_bytes + 3] ^= 0x40  # sample 2, token 0: the high byte
    shards.paths[0].write_bytes(bytes(data))
    manifest = json.loads((copy / "manifest.json").read_text())
    manifest["splits"]["train"]["shards"][0]["sha256"] = hashlib.sha256(data).hexdigest()
    (copy / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(DataError, match=r"train-00000.tar: sample 2 holds token id \d+, outside the manifest's "
                                        r"vocabulary \(V = 500\)"):
        StreamLoader(str(copy), "train", 4, shuffle=False).read_shard(0)
