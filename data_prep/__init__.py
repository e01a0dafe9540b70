"""Offline data jobs: corpus readers, tokenizers, MDLM wrapping, webdataset sharding, manifest, verification."""
