"""Tensor parallelism (megatron-core) against the dense model: 2 CPU ranks over gloo, TP = 2."""
import pytest
import torch

from models.autoregressive import next_token_nll
from models.didi import entropy, forward_kl, jeffreys, rollout_times, student_rollout
from models.discriminator import Discriminator
from models.diffusion import NEG_INF, LogLinearSchedule, nelbo_per_token, subs_log_probs
from models.dit import DiT
from models.sampler import ancestral_sample
from pipeline.runtime.distributed import run_ranks

V, L, B = 10, 8, 3  # V + 1 = 11 output columns: padded to 12 under TP = 2


def _dense_model() -> DiT:
    torch.manual_seed(0)
    model = DiT(V, hidden_size=32, num_layers=2, num_heads=4, cond_dim=16, dropout=0.0)
    with torch.no_grad():  # away from the zero initialisation, so every layer matters
        for p in model.parameters():
            p.normal_(0, 0.3)
    return model


def _inputs():
    g = torch.Generator().manual_seed(1)
    x = torch.randint(0, V, (B, L), generator=g)
    z = torch.where(torch.rand(B, L, generator=g) < 0.6, V, x)
    t = torch.rand(B, generator=g) * 0.9 + 0.05
    return x, z, t, torch.randn(B, L, V + 1, generator=g)


def _losses(model, x, z, t, shard):
    """The NELBO, the forward KL and Jeffreys divergence to a fixed distribution, the entropy on the masked
    positions and the next-token NLL of the logits (the causal judge's loss)."""
    schedule = LogLinearSchedule()
    logits = model(z, schedule.sigma(t))
    log_p = subs_log_probs(logits, z, V, shard)
    target = subs_log_probs(model(x, torch.zeros(B)).detach() * 0.5, z, V, shard)
    masked = z == V
    return (nelbo_per_token(log_p, x, z, t, V, schedule, shard).mean(), forward_kl(target, log_p, masked, shard=shard),
            entropy(log_p, masked, shard=shard), jeffreys(target, log_p, masked, 0.5, shard=shard),
            next_token_nll(logits, x, V, shard).mean(), log_p)


def _gather_columns(local: torch.Tensor, group) -> torch.Tensor:
    pieces = [torch.empty_like(local) for _ in range(torch.distributed.get_world_size(group))]
    torch.distributed.all_gather(pieces, local.contiguous(), group=group)
    return torch.cat(pieces, dim=-1)


def _checks(rank, world):
    from models.tensor_parallel import MegatronLayers, gather_dense, initialize, load_dense, shard_dense

    group = initialize(2)
    dense = _dense_model()
    model = DiT(V, hidden_size=32, num_layers=2, num_heads=4, cond_dim=16, dropout=0.0, layers=MegatronLayers(group))
    load_dense(model, dense.state_dict())
    shard = model.vocab_shard
    x, z, t, u = _inputs()
    out = {"shard": (shard.start, shard.width)}
    roundtrip = gather_dense(model)
    out["roundtrip"] = all(torch.equal(roundtrip[k], v) for k, v in dense.state_dict().items())

    sigma = LogLinearSchedule().sigma(t)
    logits = _gather_columns(model(z, sigma), group)
    out["logits"] = (logits[..., : V + 1] - dense(z, sigma)).abs().max().item()
    out["padding"] = logits[..., V + 1:].max().item()
    u_local = torch.cat([u, torch.full((B, L, 1), NEG_INF)], -1)[..., shard.start: shard.start + shard.width]
    out["float_input"] = (_gather_columns(model(u_local, sigma), group)[..., : V + 1] - dense(u, sigma)).abs().max().item()

    tp_losses, dense_losses = _losses(model, x, z, t, shard), _losses(dense, x, z, t, None)
    out["losses"] = max(abs(a.item() - b.item()) for a, b in zip(tp_losses[:-1], dense_losses[:-1]))
    sum(tp_losses[:-1]).backward()
    sum(dense_losses[:-1]).backward()
    grads = gather_dense(model, {n: p.grad for n, p in model.named_parameters()})
    out["grads"] = max((grads[n] - p.grad).abs().max().item() for n, p in dense.named_parameters())
    out["grad_scale"] = max(p.grad.abs().max().item() for p in dense.parameters())

    tp_log_p, dense_log_p = tp_losses[-1].detach(), dense_losses[-1].detach()
    out["sample"] = torch.equal(
        ancestral_sample(lambda zz: subs_log_probs(model(zz, torch.zeros(zz.shape[0])), zz, V, shard),
                         torch.full((B, L), V), 6, V, generator=torch.Generator().manual_seed(5), shard=shard),
        ancestral_sample(lambda zz: subs_log_probs(dense(zz, torch.zeros(zz.shape[0])), zz, V),
                         torch.full((B, L), V), 6, V, generator=torch.Generator().manual_seed(5)))
    rollouts = [student_rollout(lambda zz, m=m, s=s: subs_log_probs(m(zz, torch.zeros(B)), zz, V, s), rollout_times(t), L,
                                V, LogLinearSchedule(), [torch.Generator().manual_seed(10 + i) for i in range(B)], shard=s)
                for m, s in ((model, shard), (dense, None))]
    out["rollout"] = (torch.equal(rollouts[0].x, rollouts[1].x),
                      (rollouts[0].log_prob - rollouts[1].log_prob).abs().max().item())
    out["log_probs"] = (_gather_columns(tp_log_p, group)[..., : V + 1] - dense_log_p).abs().max().item()

    discriminators = []
    for teacher in (model, dense):  # the trunk copied from the teacher, the same replicated head
        torch.manual_seed(3)
        discriminators.append(Discriminator(teacher, unfreeze_blocks=1))
    out["discriminator"] = (discriminators[0](z, sigma) - discriminators[1](z, sigma)).abs().max().item()
    out["discriminator_float"] = (discriminators[0](u_local, sigma) - discriminators[1](u, sigma)).abs().max().item()

    naive = shard_dense(dense.state_dict(), model)  # the negative control: q, k and v split contiguously
    for name, value in dense.state_dict().items():
        if name.endswith("attn_qkv.weight"):
            naive[name] = value.chunk(2)[rank].clone()
    model.load_state_dict(naive, strict=False)
    out["naive_qkv"] = (_gather_columns(model(z, sigma), group)[..., : V + 1] - dense(z, sigma)).abs().max().item()
    return out


@pytest.fixture(scope="module")
def results():
    return run_ranks(_checks, 2)


@pytest.mark.distributed
def test_tensor_parallel_dit_equals_the_dense_model(results):
    for rank, r in enumerate(results):
        assert r["shard"] == (6 * rank, 6)  # V + 1 = 11 columns padded to 12
        assert r["roundtrip"], "gather_dense(shard_dense(w)) != w"
        assert r["logits"] < 1e-4 and r["float_input"] < 1e-4
        assert r["padding"] <= NEG_INF / 2  # padding columns never get probability
        assert r["log_probs"] < 1e-4
        assert r["discriminator"] < 1e-4 and r["discriminator_float"] < 1e-4


@pytest.mark.distributed
def test_vocab_parallel_losses_and_gradients_equal_the_dense_ones(results):  # NELBO, KL, Jeffreys, H, NLL
    for r in results:
        assert r["losses"] < 1e-5
        assert r["grad_scale"] > 1e-2 and r["grads"] < 1e-4 * r["grad_scale"]


@pytest.mark.distributed
def test_vocab_parallel_sampling_draws_the_dense_tokens(results):
    for r in results:
        assert r["sample"]
        same_tokens, log_prob_gap = r["rollout"]
        assert same_tokens and log_prob_gap < 1e-4


@pytest.mark.distributed
def test_naive_contiguous_qkv_split_is_wrong(results):
    for r in results:
        assert r["naive_qkv"] > 1e-2
