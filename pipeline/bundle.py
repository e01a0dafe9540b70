"""Inference bundles: the format ``write_bundle`` writes (conversion, MDLM import) and ``load_bundle`` reads back.

A bundle is a directory::

    manifest.json              format, kind (teacher | student | judge), source checkpoint and step, model dimensions
                               (a latent-conditioned student's ``latent_dim`` too), discriminator settings, the
                               default unmasking order (students: the order their rollouts used) and ξ's redraw,
                               tokenizer fingerprint, sha256 of every other file
    model.safetensors          the EMA weights (the teacher's, or the distilled EMA student's)
    online.safetensors         optional: the online student
    discriminator.safetensors  distilled bundles: the discriminator (RGAS needs it)
    config.yaml                the training run's resolved config, for people and for retraining
    tokenizer/                 the tokenizer directory of the training data

Loading needs nothing but torch, safetensors and ``models/``; every file is checked against its hash first.
"""
from __future__ import annotations

import hashlib
import itertools
import json
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

from models.discriminator import Discriminator
from models.dit import DiT, latent_shape
from models.unmasking import UnmaskingOrder

FORMAT = 1
MODEL_KEYS = ("vocab_size", "hidden_size", "num_layers", "num_heads", "cond_dim", "seq_len", "causal")


class BundleError(ValueError):
    """A bundle that cannot be written or used; the message names the file and the reason."""


def sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def bundle_files(directory: Path) -> dict[str, str]:
    """sha256 of every file below ``directory`` except the manifest, by relative path."""
    return {str(p.relative_to(directory)): sha256(p) for p in sorted(directory.rglob("*"))
            if p.is_file() and p.name != "manifest.json"}


def read_bundle_manifest(directory: Path) -> dict:
    try:
        manifest = json.loads((directory / "manifest.json").read_text())
    except FileNotFoundError:
        raise BundleError(f"{directory}: not a bundle (no manifest.json)") from None
    except json.JSONDecodeError as err:
        raise BundleError(f"{directory / 'manifest.json'}: not valid JSON ({err})") from None
    if manifest.get("format") != FORMAT:
        raise BundleError(f"{directory / 'manifest.json'}: bundle format {manifest.get('format')}, this code reads "
                          f"format {FORMAT}")
    return manifest


def verify_bundle(directory: Path) -> dict:
    """The manifest, after checking that every file it lists is present with its hash (and nothing else is)."""
    manifest = read_bundle_manifest(directory)
    for name, digest in manifest["files"].items():
        path = directory / name
        if not path.is_file():
            raise BundleError(f"{path}: missing from the bundle")
        if sha256(path) != digest:
            raise BundleError(f"{path}: corrupt or changed (sha256 differs from manifest.json)")
    return manifest


def write_bundle(out: Path, weights: dict[str, dict[str, torch.Tensor]], manifest: dict, copies: dict[str, Path],
                 log) -> bool:
    """Stage the safetensors files, the copied files or folders and the manifest (with every file's hash)
    beside ``out``, then rename into place; an existing ``out`` is kept if identical (returns False) and
    refused otherwise."""
    out.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=out.parent, prefix=f".{out.name}.") as tmp:
        staging = Path(tmp) / "bundle"
        staging.mkdir()
        for name, state in weights.items():
            save_file(_contiguous(state), staging / name, metadata={"kind": manifest["kind"]})
        for name, source in copies.items():
            (shutil.copytree if source.is_dir() else shutil.copy)(source, staging / name)
        manifest["files"] = bundle_files(staging)
        (staging / "manifest.json").write_text(json.dumps(manifest, indent=1) + "\n")
        if out.exists():
            _keep_if_identical(out, manifest, log)
            return False
        staging.rename(out)
        return True


def _keep_if_identical(out: Path, manifest: dict, log) -> None:
    try:
        existing = read_bundle_manifest(out)
    except BundleError:
        existing = None
    if existing is None or not existing["files"] == manifest["files"] == bundle_files(out):
        raise BundleError(f"{out} exists and is {'another bundle' if existing else 'not a bundle'}: choose another "
                          "--out or remove it")
    log(f"{out}: already holds this bundle")


def _contiguous(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    return {k: v.detach().to(torch.float32).contiguous().clone() for k, v in state.items() if torch.is_tensor(v)}


def new_dit(model: dict, dropout: float = 0.0) -> DiT:
    return DiT(model["vocab_size"], model["hidden_size"], model["num_layers"], model["num_heads"], model["cond_dim"],
               dropout=dropout, causal=model.get("causal", False), latent_dim=model.get("latent_dim", 0),
               latent_input=model.get("latent_input", "condition"))


def new_discriminator(model: dict, settings: dict) -> Discriminator:
    """A student bundle's discriminator: the teacher's DiT (it never sees the student's latent) with its head."""
    return Discriminator(new_dit({**model, "latent_dim": 0}), settings["unfreeze_blocks"], settings["sigma_to"])


def _load_weights(module: torch.nn.Module, path: Path) -> None:
    state = load_file(path)
    missing, unexpected = module.load_state_dict(state, strict=False)
    if missing or unexpected:
        raise BundleError(f"{path}: does not fit the manifest's model (missing {missing[:3]}, unexpected "
                          f"{unexpected[:3]})")


@dataclass
class Bundle:
    path: Path
    manifest: dict
    model: DiT  # EMA weights, eval mode (or, for an exact judge's reference, a chain's exact posterior)
    discriminator: Discriminator | None
    online: DiT | None

    @property
    def seq_len(self) -> int:
        return self.manifest["model"]["seq_len"]

    @property
    def mask_id(self) -> int:
        return self.manifest["model"]["vocab_size"]

    @property
    def device(self) -> torch.device:
        return next(itertools.chain(self.model.parameters(), self.model.buffers())).device

    @property
    def tokenizer_dir(self) -> Path:
        return self.path / "tokenizer"

    @property
    def order(self) -> UnmaskingOrder:
        """The unmasking order the bundle samples in by default: a student's distillation order, else random."""
        spec = self.manifest.get("sampling", {}).get("order", "random")
        try:
            return UnmaskingOrder.parse(spec).check_length(self.seq_len)
        except ValueError as err:
            raise BundleError(f"{self.path / 'manifest.json'}: sampling.order: {err}") from None

    @property
    def latent_dim(self) -> int:
        """ξ's dimension for a latent-conditioned student (our extension, spec §11); 0 for every other model."""
        return self.manifest["model"].get("latent_dim", 0)

    @property
    def latent_shape(self) -> tuple[int, ...]:
        """One row's ξ for the student's DiT (``models.dit.latent_shape``)."""
        return latent_shape(self.manifest["model"].get("latent_input", "condition"), self.latent_dim, self.seq_len)

    @property
    def latent_redraw(self) -> str:
        """A latent-conditioned student's ξ: drawn once per sequence or at every step (as it was distilled)."""
        return self.manifest.get("sampling", {}).get("latent_redraw", "sequence")


def load_bundle(path: str | Path, device: str | torch.device = "cpu") -> Bundle:
    """Verify and load a bundle: the EMA model, and the discriminator and online student if present."""
    path = Path(path)
    manifest = verify_bundle(path)
    tokenizer = json.loads((path / "tokenizer" / "tokenizer.json").read_text())
    if tokenizer["fingerprint"] != manifest["tokenizer"]["fingerprint"] or \
            tokenizer["vocab_size"] != manifest["model"]["vocab_size"]:
        raise BundleError(f"{path / 'tokenizer'}: tokenizer {tokenizer['fingerprint']} (V = {tokenizer['vocab_size']}) "
                          f"does not match the weights' ({manifest['tokenizer']['fingerprint']}, "
                          f"V = {manifest['model']['vocab_size']})")
    model = new_dit(manifest["model"])
    _load_weights(model, path / "model.safetensors")
    discriminator = online = None
    if "discriminator.safetensors" in manifest["files"]:
        discriminator = new_discriminator(manifest["model"], manifest["discriminator"])
        _load_weights(discriminator, path / "discriminator.safetensors")
        discriminator = discriminator.to(device).eval()
    if "online.safetensors" in manifest["files"]:
        online = new_dit(manifest["model"])
        _load_weights(online, path / "online.safetensors")
        online = online.to(device).eval()
    bundle = Bundle(path, manifest, model.to(device).eval(), discriminator, online)
    _ = bundle.order  # an unknown default order fails here, naming the manifest
    return bundle
