"""Model and DeepSpeed engine construction: DiT from the config, AdamW that skips non-finite steps, LR schedule."""
from __future__ import annotations

import contextlib
import math

import torch
import torch.distributed as dist

from models.dit import DiT
from pipeline.config import Config, ModelConfig, OptimConfig, bf16_compute, dit_for
from pipeline.runtime.distributed import import_deepspeed, uses_cuda


def build_model(model: ModelConfig, zero_stage: int = 0, ds_config: dict | None = None,
                weights: dict[str, torch.Tensor] | None = None, dropout: float | None = None, latent_dim: int = 0,
                latent_input: str = "condition") -> DiT:
    """The DiT of the config, from dense ``weights`` or freshly initialised; ``dropout`` overrides the config's;
    ``latent_dim`` and ``latent_input``: a latent-conditioned student's (``models.dit``).

    With ``model.tensor_parallel`` > 1 (process groups from ``pipeline.runtime.distributed.setup``): this rank's shards
    of that dense model, so every tensor-parallel size starts from the same weights (DeepSpeed partitions a
    ZeRO-3 model when its engine is built). Otherwise a fresh ZeRO-3 model is partitioned as it is created."""
    options = dict(dropout=model.dropout if dropout is None else dropout, causal=model.causal,
                   checkpointing=model.activation_checkpointing, latent_dim=latent_dim, latent_input=latent_input)
    if model.tensor_parallel > 1:
        from models.tensor_parallel import MegatronLayers, initialize, load_dense

        dense = dit_for(model, **options).state_dict()  # drawn even when unused: later draws stay the dense run's
        with torch.random.fork_rng(devices=[]):
            sharded = dit_for(model, **options, layers=MegatronLayers(initialize(model.tensor_parallel)))
        load_dense(sharded, dense if weights is None else weights)
        return sharded
    context = contextlib.nullcontext()
    if zero_stage == 3 and weights is None:
        context = import_deepspeed().zero.Init(config_dict_or_path=ds_config)
    with context:
        dit = dit_for(model, **options)
    if weights is not None:
        dit.load_state_dict(weights)
    return dit


class MegatronMPU:
    """megatron-core's ``parallel_state`` as DeepSpeed's ``mpu``: ZeRO reduces and partitions over the
    data-parallel group; model parallelism is tensor parallelism (there are no pipeline stages)."""

    def __getattr__(self, name: str):
        from megatron.core import parallel_state

        return getattr(parallel_state, name)

    def get_model_parallel_world_size(self) -> int:
        return self.get_tensor_model_parallel_world_size()

    def get_model_parallel_rank(self) -> int:
        return self.get_tensor_model_parallel_rank()

    def get_model_parallel_group(self):
        return self.get_tensor_model_parallel_group()


def mpu_for(model: torch.nn.Module) -> MegatronMPU | None:
    """The ``mpu`` of a tensor-parallel model's engine (None for a dense one); marks the model's split
    parameters for DeepSpeed's gradient norm."""
    if getattr(model, "vocab_shard", None) is None:
        return None
    from models.tensor_parallel import mark_split_parameters

    mark_split_parameters(model)
    return MegatronMPU()


class GuardedAdamW(torch.optim.AdamW):
    """AdamW that skips the update on every rank when any rank holds a non-finite gradient.

    DeepSpeed calls ``step`` on the (partitioned) fp32 parameters after gradient reduction and clipping, so
    the check sees exactly what would be applied; the flag is all-reduced so that ranks never diverge.
    """

    def __init__(self, params, **kwargs):
        super().__init__(params, **kwargs)
        self.last_step_skipped = False

    @torch.no_grad()
    def step(self, closure=None):
        grads = [p.grad for group in self.param_groups for p in group["params"] if p.grad is not None]
        bad = torch.zeros(1, device=grads[0].device if grads else "cpu")
        if grads:  # one flag on the device: a check per tensor would wait for the GPU once per tensor
            bad[0] = ~torch.stack([torch.isfinite(g).all() for g in grads]).all()
        if dist.is_initialized() and dist.get_world_size() > 1:
            dist.all_reduce(bad, op=dist.ReduceOp.MAX)
        self.last_step_skipped = bool(bad.item())
        if self.last_step_skipped:
            return None
        return super().step(closure)


def step_skipped(engine) -> bool:
    """Whether the engine's last optimizer step left the weights as they were. DeepSpeed's ZeRO-1/2 optimizers
    find overflowing gradients themselves and skip the step without calling the inner optimizer (whose flag
    then dates from an earlier step); otherwise the inner ``GuardedAdamW`` decided: the engine's
    ``basic_optimizer`` (its ``optimizer`` is ZeRO's wrapper around it)."""
    return not engine.was_step_applied() or engine.basic_optimizer.last_step_skipped


def lr_factor(step: int, optim: OptimConfig, max_steps: int) -> float:
    """Linear warm-up over ``warmup_steps``, then constant, linear decay or cosine decay to 0 at ``max_steps``."""
    if step < optim.warmup_steps:
        return (step + 1) / optim.warmup_steps
    if optim.schedule == "constant":
        return 1.0
    progress = min(1.0, (step - optim.warmup_steps) / max(1, max_steps - optim.warmup_steps))
    if optim.schedule == "linear":
        return 1.0 - progress
    return 0.5 * (1.0 + math.cos(math.pi * progress))


def ds_config(cfg: Config, grad_clip: float | None = None, zero_stage: int | None = None,
              offload: bool = False) -> dict:
    """DeepSpeed's config: the per-rank micro-batch, accumulation, clipping and ZeRO stage, fp32 master weights,
    and bf16 compute through DeepSpeed's own ``torch_autocast`` section (without it an engine switches off an
    autocast entered outside it on a GPU and computes in fp32). No module is listed as safe for lower-precision
    communication, so gradients are reduced in fp32. The throughput timer is off: it synchronises the device
    at every forward and step. ``offload`` keeps a ZeRO-3 model's parameters in CPU memory (for the teacher)."""
    zero = {"stage": cfg.train.zero_stage if zero_stage is None else zero_stage}
    if offload:
        zero["offload_param"] = {"device": "cpu", "pin_memory": False}
    config = {
        "train_micro_batch_size_per_gpu": cfg.data.batch_size,
        "gradient_accumulation_steps": cfg.train.grad_accum,
        "gradient_clipping": cfg.optim.grad_clip if grad_clip is None else grad_clip,
        "zero_optimization": zero,
        "zero_allow_untested_optimizer": True,
        "steps_per_print": 10**12,
        "wall_clock_breakdown": False,
        "timers": {"throughput": {"enabled": False}},
    }
    if bf16_compute(cfg, "cuda" if uses_cuda() else "cpu"):
        config["torch_autocast"] = {"enabled": True, "dtype": "bfloat16", "lower_precision_safe_modules": []}
    return config


def optimizer_for(model: torch.nn.Module, optim: OptimConfig, max_steps: int, lr_scales: dict[str, float] | None = None):
    """GuardedAdamW over the parameters that require grad, and its LR schedule: the engines' and the
    benchmarks' plain references', so both do the same work. ``lr_scales``: parameters whose name starts with a
    key get that multiple of the learning rate (a fresh layer among trained ones), in a group of their own."""
    scales = lr_scales or {}
    named = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
    params = [{"params": [p for n, p in named if not n.startswith(tuple(scales))]}]
    params += [{"params": [p for n, p in named if n.startswith(k)], "lr": optim.lr * scale} for k, scale in scales.items()]
    optimizer = GuardedAdamW(params, lr=optim.lr, betas=tuple(optim.betas), weight_decay=optim.weight_decay)
    return optimizer, torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: lr_factor(step, optim, max_steps))


def build_engine(model: torch.nn.Module, optim: OptimConfig, max_steps: int, config: dict,
                 lr_scales: dict[str, float] | None = None):
    """A DeepSpeed engine with ``optimizer_for``'s optimizer and schedule (the engine keeps the optimizer as
    ``basic_optimizer``)."""
    deepspeed = import_deepspeed()
    optimizer, scheduler = optimizer_for(model, optim, max_steps, lr_scales)
    engine, _, _, _ = deepspeed.initialize(model=model, optimizer=optimizer, lr_scheduler=scheduler, config=config,
                                           mpu=mpu_for(model))
    return engine


def build_frozen_engine(model: torch.nn.Module, config: dict):
    """An engine with no optimizer, in eval mode and without grad: ZeRO-3 partitions (and may offload) it,
    lower stages just place it."""
    deepspeed = import_deepspeed()
    model.requires_grad_(False)
    engine, _, _, _ = deepspeed.initialize(model=model, config=config, mpu=mpu_for(model))
    engine.eval()
    return engine
