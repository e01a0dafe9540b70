"""Tensor parallelism for the DiT through megatron-core: the layer factory and the dense <-> sharded weight layout.

``MegatronLayers`` hands the DiT megatron's column-parallel layers for the fused qkv and the MLP input,
row-parallel ones for the attention output and the MLP output, and vocabulary-parallel token embedding and
output projection; adaLN modulations, the σ embedding and the norms stay replicated. Everything after a
row-parallel layer is replicated on the tensor-parallel ranks, so the DiT's dropout (which sits only there) must
draw the same mask on them: their default generators share the seed, which differs between data-parallel ranks.

The vocabulary (V + 1 rows with [MASK]) is padded to a multiple of the tensor-parallel size; the padding rows
of the embedding are never looked up and the padding logits are −1e6, so they never get probability.

The fused qkv weight is [Q; K; V] in the dense model. A column-parallel layer gives rank r a contiguous block of
output rows, so the tensor-parallel layout stores [Q_0; K_0; V_0; Q_1; K_1; V_1; …] with Q_r the rows of the
heads of rank r: each rank then holds the same heads of q, k and v. ``shard_dense`` and ``gather_dense`` map
between the dense state dict and a rank's shards (and back), so a teacher trained at one size loads at another.
Weights are not initialised by megatron: a tensor-parallel model starts as the shards of the dense model built
with the same seed.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.distributed as dist
from torch import nn

from models.layers import DenseLayers, Role
from models.vocab_parallel import NEG_INF, VocabShard, log_softmax, reduce_sum


def initialize(tensor_parallel: int):
    """megatron-core's process groups for tensor parallelism ``tensor_parallel`` (data parallelism over the rest);
    returns the tensor-parallel group. The default process group must exist."""
    from megatron.core import parallel_state

    if not parallel_state.model_parallel_is_initialized():
        parallel_state.initialize_model_parallel(tensor_model_parallel_size=tensor_parallel)
    elif parallel_state.get_tensor_model_parallel_world_size() != tensor_parallel:
        raise ValueError(f"tensor parallelism is already set up with size "
                         f"{parallel_state.get_tensor_model_parallel_world_size()}, not {tensor_parallel}")
    return parallel_state.get_tensor_model_parallel_group()


def padded(width: int, tensor_parallel: int) -> int:
    return -(-width // tensor_parallel) * tensor_parallel


def _layer_classes():
    """The megatron layer subclasses, defined on first use so that dense models never import megatron."""
    from megatron.core import tensor_parallel as mtp

    class ColumnLinear(mtp.ColumnParallelLinear):
        """Output features split over the ranks; returns the local output only."""

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return super().forward(x)[0]

    class FusedQKVLinear(ColumnLinear):
        """The fused qkv projection: rank r's rows are [Q_r; K_r; V_r] (see the module docstring)."""

    class RowLinear(mtp.RowParallelLinear):
        """Input features split over the ranks; the output is all-reduced (replicated), bias added after."""

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return super().forward(x)[0]

    class VocabProjection(ColumnLinear):
        """The output projection over the padded vocabulary (this rank's ``shard`` of it); padding columns get −1e6."""

        def __init__(self, dim: int, num_outputs: int, shard: VocabShard, **kwargs):
            super().__init__(dim, padded(num_outputs, kwargs["tp_group"].size()), **kwargs)
            columns = torch.arange(shard.start, shard.start + shard.width)
            self.register_buffer("padding", torch.where(columns < num_outputs, 0.0, NEG_INF), persistent=False)
            self.num_outputs = num_outputs

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            out = super().forward(x)
            return out + self.padding.to(out.dtype)

    class ParallelTokenEmbedding(mtp.VocabParallelEmbedding):
        """Token ids -> rows of E (vocabulary-parallel); a float input u (this rank's columns of the full
        padded width) -> softmax(u) @ E, as ``TokenEmbedding`` with W = V + 1."""

        def __init__(self, num_embeddings: int, dim: int, shard: VocabShard, **kwargs):
            super().__init__(padded(num_embeddings, kwargs["tp_group"].size()), dim, **kwargs)
            self.shard = shard

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            if x.is_floating_point():
                if x.shape[-1] != self.shard.width:
                    raise ValueError(f"float input width {x.shape[-1]} is not this rank's {self.shard.width} "
                                     f"vocabulary columns")
                probs = log_softmax(x, self.shard).exp()
                return reduce_sum(probs @ self.weight.to(x.dtype), self.shard)
            return super().forward(x)

    return ColumnLinear, FusedQKVLinear, RowLinear, VocabProjection, ParallelTokenEmbedding


class MegatronLayers(DenseLayers):
    """megatron-core layers over the tensor-parallel ``group`` (see ``initialize``; anything with ``size()`` and
    ``rank()`` builds the shapes of that rank's shards, e.g. on the meta device for memory planning)."""

    def __init__(self, group):
        from megatron.core.model_parallel_config import ModelParallelConfig

        self.group, self.size = group, group.size()
        self.config = ModelParallelConfig(tensor_model_parallel_size=self.size, use_cpu_initialization=True,
                                          perform_initialization=False, gradient_accumulation_fusion=False)
        (self.column, self.qkv, self.row, self.projection, self.embedding_class) = _layer_classes()

    def _kwargs(self) -> dict:
        return dict(config=self.config, init_method=nn.init.zeros_, tp_group=self.group)

    def linear(self, in_features: int, out_features: int, bias: bool, role: Role, zero_init: bool = False) -> nn.Module:
        if role == "replicated":
            return super().linear(in_features, out_features, bias, role, zero_init)
        if role == "row":
            return self.row(in_features, out_features, bias=bias, input_is_parallel=True, skip_bias_add=False,
                            **self._kwargs())
        cls = self.qkv if role == "qkv" else self.column
        return cls(in_features, out_features, bias=bias, gather_output=False, **self._kwargs())

    def embedding(self, num_embeddings: int, dim: int) -> nn.Module:
        return self.embedding_class(num_embeddings, dim, self.vocab_shard(num_embeddings), **self._kwargs())

    def vocab_projection(self, dim: int, num_outputs: int) -> nn.Module:
        return self.projection(dim, num_outputs, self.vocab_shard(num_outputs), bias=True, gather_output=False,
                               **self._kwargs())

    def local_heads(self, heads: int) -> int:
        if heads % self.size:
            raise ValueError(f"{heads} attention heads do not split over tensor parallelism {self.size}")
        return heads // self.size

    def vocab_shard(self, width: int) -> VocabShard:
        local = padded(width, self.size) // self.size
        return VocabShard(self.group, self.group.rank() * local, local)


# ---- the dense <-> tensor-parallel weight layout ----

@dataclass(frozen=True)
class Partition:
    dim: int  # the dimension split over the ranks
    size: int  # its dense size (the vocabulary's rows are padded beyond it)
    qkv: bool = False  # rows in the per-rank [Q_r; K_r; V_r] layout


def layout(model: nn.Module) -> dict[str, Partition]:
    """Name -> Partition for every split tensor of a tensor-parallel model (replicated ones are absent)."""
    from megatron.core.tensor_parallel import ColumnParallelLinear, RowParallelLinear, VocabParallelEmbedding

    vocab = model.vocab_size + 1
    parts = {}
    for name, module in model.named_modules():
        prefix = f"{name}." if name else ""
        if isinstance(module, VocabParallelEmbedding):
            parts[prefix + "weight"] = Partition(0, vocab)
        elif isinstance(module, ColumnParallelLinear):
            size = getattr(module, "num_outputs", module.output_size)
            qkv = type(module).__name__ == "FusedQKVLinear"
            parts[prefix + "weight"] = Partition(0, size, qkv)
            if module.bias is not None:
                parts[prefix + "bias"] = Partition(0, size)
        elif isinstance(module, RowParallelLinear):
            parts[prefix + "weight"] = Partition(1, module.input_size)
    return parts


def mark_split_parameters(model: nn.Module) -> None:
    """Set megatron's ``tensor_model_parallel`` attributes on the split parameters (megatron sets them only when
    it initialises the weights, and a deep copy drops them): DeepSpeed's gradient norm counts a split tensor on
    every rank and a replicated one once."""
    from megatron.core.tensor_parallel.layers import set_tensor_model_parallel_attributes

    parameters = dict(model.named_parameters())
    for name, part in layout(model).items():
        if name in parameters:
            for attribute in ("tensor_model_parallel", "partition_dim", "partition_stride"):
                if hasattr(parameters[name], attribute):
                    delattr(parameters[name], attribute)
            set_tensor_model_parallel_attributes(parameters[name], True, part.dim, 1)


def qkv_to_ranks(weight: torch.Tensor, ranks: int) -> torch.Tensor:
    """Dense [Q; K; V] rows -> [Q_0; K_0; V_0; Q_1; …] (each of Q, K, V split into ``ranks`` head groups)."""
    q, k, v = (part.chunk(ranks) for part in weight.chunk(3))
    return torch.cat([torch.cat([q[r], k[r], v[r]]) for r in range(ranks)])


def qkv_from_ranks(weight: torch.Tensor, ranks: int) -> torch.Tensor:
    """The inverse of ``qkv_to_ranks``."""
    per_rank = [block.chunk(3) for block in weight.chunk(ranks)]
    return torch.cat([torch.cat([blocks[i] for blocks in per_rank]) for i in range(3)])


def load_dense(model: nn.Module, dense: dict[str, torch.Tensor]) -> None:
    """Load a dense state dict into this rank's shards of the tensor-parallel ``model``; every tensor must match."""
    result = model.load_state_dict(shard_dense(dense, model), strict=False)
    missing = [k for k in result.missing_keys if not k.endswith("._extra_state")]
    if missing or result.unexpected_keys:
        raise KeyError(f"dense weights do not fit the model: missing {missing}, unexpected {result.unexpected_keys}")


def shard_dense(dense: dict[str, torch.Tensor], model: nn.Module) -> dict[str, torch.Tensor]:
    """This rank's state dict of the tensor-parallel ``model`` from a dense state dict."""
    group = model.vocab_shard.group
    ranks, rank = group.size(), group.rank()
    parts, own = layout(model), model.state_dict()
    out = {}
    for name, value in dense.items():
        part = parts.get(name)
        if part is not None:
            if part.qkv:
                value = qkv_to_ranks(value, ranks)
            local = own[name].shape[part.dim]
            if value.shape[part.dim] < local * ranks:  # vocabulary padding
                pad = list(value.shape)
                pad[part.dim] = local * ranks - value.shape[part.dim]
                value = torch.cat([value, value.new_zeros(pad)], dim=part.dim)
            value = value.narrow(part.dim, rank * local, local)
        out[name] = value.clone()
    return out


def gather_dense(model: nn.Module, tensors: dict[str, torch.Tensor] | None = None) -> dict[str, torch.Tensor]:
    """The dense state dict of a tensor-parallel ``model`` (or of ``tensors`` named like its state dict, e.g. its
    gradients); every rank gets it (a collective over the model's group)."""
    group = model.vocab_shard.group
    ranks, parts = group.size(), layout(model)
    out = {}
    for name, value in (model.state_dict() if tensors is None else tensors).items():
        if not isinstance(value, torch.Tensor):  # megatron's *._extra_state entries
            continue
        part = parts.get(name)
        if part is not None:
            pieces = [torch.empty_like(value) for _ in range(ranks)]
            dist.all_gather(pieces, value.contiguous(), group=group)
            value = join_shards(pieces, part.dim, part.size, part.qkv)
        out[name] = value.detach().clone()
    return out


def join_shards(shards: list[torch.Tensor], dim: int, size: int, qkv: bool) -> torch.Tensor:
    """The dense tensor of its tensor-parallel shards in rank order (padding dropped, qkv rows back to [Q; K; V])."""
    joined = torch.cat(shards, dim=dim).narrow(dim, 0, size)
    return qkv_from_ranks(joined, len(shards)).contiguous() if qkv else joined.contiguous()
