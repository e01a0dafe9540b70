import itertools
import json
import shutil

import numpy as np
import pytest
import torch
import torch.distributed as dist

from data_prep.shards import iter_shard
from pipeline.config import Config, DataConfig, ModelConfig, RunConfig
from pipeline.runtime.data import TokenLoader, TokenShards, loader_from_config
from pipeline.runtime.dataset import DataError, epoch_order
from pipeline.runtime.distributed import run_ranks


def all_batches(loader, n=None):
    return [(b["index"].clone(), b["input_ids"].clone()) for b in itertools.islice(iter(loader), n)]


def test_random_access_equals_streaming_the_shards(tiny_data):
    shards = TokenShards(tiny_data, "train")
    streamed = [s for p in shards.paths for _, s in iter_shard(p)]
    assert len(shards) == len(streamed)
    for i in range(len(shards)):
        assert np.array_equal(shards[i], streamed[i])


@pytest.mark.parametrize("workers", [0, 2])
def test_two_ranks_read_disjoint_complete_data(tiny_data, workers):
    shards = TokenShards(tiny_data, "train")
    B, W = 4, 2
    per_rank = [all_batches(TokenLoader(tiny_data, "train", B, rank=r, world_size=W, seed=5, num_workers=workers))
                for r in range(W)]
    steps = len(shards) // (W * B)
    assert [len(b) for b in per_rank] == [steps, steps]
    seen = [int(i) for batches in per_rank for idx, _ in batches for i in idx]
    assert len(seen) == len(set(seen)) == steps * W * B  # disjoint, and only the remainder is dropped
    assert sorted(seen) == sorted(epoch_order(len(shards), 5, 0, True)[: steps * W * B].tolist())
    for batches in per_rank:
        for idx, tokens in batches:
            assert torch.equal(tokens, torch.from_numpy(np.stack([shards[int(i)] for i in idx])).long())


def test_ranks_together_equal_the_single_process_batch(tiny_data):
    single = all_batches(TokenLoader(tiny_data, "train", 8, seed=1))
    ranks = [all_batches(TokenLoader(tiny_data, "train", 4, rank=r, world_size=2, seed=1)) for r in range(2)]
    for s, (a, b) in enumerate(zip(ranks[0], ranks[1])):
        assert torch.equal(single[s][0], torch.cat([a[0], b[0]]))
        assert torch.equal(single[s][1], torch.cat([a[1], b[1]]))


def test_order_depends_on_seed_and_epoch_only(tiny_data):
    loader = TokenLoader(tiny_data, "train", 4, seed=2)
    epoch0 = all_batches(loader)
    epoch1 = all_batches(loader)
    assert loader.epoch == 1
    again = all_batches(TokenLoader(tiny_data, "train", 4, seed=2, num_workers=2))
    assert all(torch.equal(a[0], b[0]) for a, b in zip(epoch0, again))
    assert not torch.equal(torch.cat([i for i, _ in epoch0]), torch.cat([i for i, _ in epoch1]))
    ordered = all_batches(TokenLoader(tiny_data, "val", 2, shuffle=False))
    assert torch.cat([i for i, _ in ordered]).tolist() == list(range(2 * len(ordered)))


@pytest.mark.parametrize("stop", [0, 3, "end of epoch"])
def test_resume_mid_epoch_yields_exactly_the_remaining_stream(tiny_data, stop):
    def make(workers=0):
        return TokenLoader(tiny_data, "train", 4, rank=1, world_size=2, seed=9, num_workers=workers)

    reference = make()
    steps = len(reference)
    stream = all_batches(reference) + all_batches(reference)  # two epochs, uninterrupted
    first = make()
    consumed = all_batches(first, steps if stop == "end of epoch" else stop)
    state = json.loads(json.dumps(first.state_dict()))  # survives a checkpoint as plain data
    resumed = make(workers=2)
    resumed.load_state_dict(state)
    joined = consumed + all_batches(resumed)
    if len(joined) < 2 * steps:
        joined += all_batches(resumed)  # the next epoch goes on as before
    assert len(joined) == len(stream) == 2 * steps
    for (ia, ta), (ib, tb) in zip(joined, stream):
        assert torch.equal(ia, ib) and torch.equal(ta, tb)


def test_resume_with_a_different_layout_is_refused(tiny_data):
    state = TokenLoader(tiny_data, "train", 4, rank=0, world_size=2).state_dict()
    with pytest.raises(DataError, match="world_size 2 -> 1"):
        TokenLoader(tiny_data, "train", 4).load_state_dict(state)


def test_model_mismatch_is_refused_with_a_clear_message(tiny_data):
    manifest = json.loads((tiny_data / "manifest.json").read_text())
    good = ModelConfig(seq_len=64, vocab_size=500, tokenizer_fingerprint=manifest["tokenizer"]["fingerprint"])
    TokenLoader(tiny_data, "train", 4, model=good)
    with pytest.raises(DataError, match="seq_len 64 differs from model.seq_len 128"):
        TokenLoader(tiny_data, "train", 4, model=ModelConfig(seq_len=128, vocab_size=500))
    with pytest.raises(DataError, match="vocab_size 500 differs from model.vocab_size 50257"):
        TokenLoader(tiny_data, "train", 4, model=ModelConfig(seq_len=64, vocab_size=50257))
    with pytest.raises(DataError, match="tokenizer fingerprint .* differs from model.tokenizer_fingerprint beef"):
        TokenLoader(tiny_data, "train", 4, model=ModelConfig(seq_len=64, vocab_size=500, tokenizer_fingerprint="beef"))


def test_loader_from_config_uses_data_run_and_model_sections(tiny_data):
    cfg = Config(run=RunConfig(seed=7), data=DataConfig(path=str(tiny_data), batch_size=3, num_workers=0),
                 model=ModelConfig(seq_len=64, vocab_size=500))
    loader = loader_from_config(cfg, "val", rank=1, world_size=2, shuffle=False)
    assert (loader.batch_size, loader.rank, loader.world_size, loader.seed) == (3, 1, 2, 7)
    assert next(iter(loader))["index"].tolist() == [3, 4, 5]
    with pytest.raises(DataError, match="differs from model.seq_len 32"):
        loader_from_config(Config(data=cfg.data, model=ModelConfig(seq_len=32, vocab_size=500)), "val", 0, 1)


def test_bad_data_directories(tiny_data, tmp_path):
    with pytest.raises(DataError, match="manifest.json not found: prepare the data first"):
        TokenLoader(tmp_path, "train", 4)
    copy = tmp_path / "copy"
    shutil.copytree(tiny_data, copy)
    with pytest.raises(DataError, match="no split 'test'"):
        TokenLoader(copy, "test", 4)
    with pytest.raises(DataError, match="fewer than one global batch"):
        TokenLoader(copy, "val", 1000)
    data = (copy / "train-00001.tar").read_bytes()
    (copy / "train-00001.tar").write_bytes(data[: len(data) // 2])
    with pytest.raises(DataError, match="train-00001.tar: .* too short .*truncated"):
        TokenLoader(copy, "train", 4)
    (copy / "train-00001.tar").unlink()
    with pytest.raises(DataError, match="shard missing: .*train-00001.tar"):
        TokenLoader(copy, "train", 4)


def _rank_reads(rank, world_size, directory):
    loader = TokenLoader(directory, "train", 3, rank=rank, world_size=dist.get_world_size(), seed=4, num_workers=2)
    idx = torch.cat([b["index"] for b in loader])
    gathered = [torch.zeros_like(idx) for _ in range(world_size)]
    dist.all_gather(gathered, idx)  # every rank must hold the same count, or this collective fails
    return [g.tolist() for g in gathered]


@pytest.mark.distributed
def test_gloo_ranks_with_workers_read_disjoint_complete_data(tiny_data):
    results = run_ranks(_rank_reads, 2, str(tiny_data))
    assert results[0] == results[1]
    seen = results[0][0] + results[0][1]
    reference = TokenLoader(tiny_data, "train", 6, seed=4)
    assert len(seen) == len(set(seen)) == len(reference) * 6
    assert seen and sorted(seen) == sorted(torch.cat([b["index"] for b in reference]).tolist())


def test_a_token_id_outside_the_vocabulary_names_its_shard_and_sample(tiny_data, tmp_path):
    """A byte flipped inside a shard's token array: the loader stops naming the shard and the sample (not an
    index error inside the embedding)."""
    copy = tmp_path / "copy"
    shutil.copytree(tiny_data, copy)
    shards = TokenShards(copy, "train")
    count = int(shards.starts[2] - shards.starts[1])
    path = shards.paths[1]
    data = bytearray(path.read_bytes())
    sample = count - 1
    at = sample * shards.stride + 512 + shards.header_bytes + 4 * 5  # token 5 of the shard's last sample
    data[at + 3] ^= 0x40  # the high byte: an id far above the vocabulary
    path.write_bytes(bytes(data))
    with pytest.raises(DataError, match=rf"train-00001.tar: sample {sample} holds token id \d+, outside the "
                                        r"vocabulary \(V = 500\): the shard is damaged"):
        for _ in TokenLoader(copy, "train", 4, shuffle=False):
            pass
