"""Pure-PyTorch modules (no DeepSpeed, no I/O): the DiT backbone, diffusion maths, discriminator head, sizes."""
