"""Deduplication: exact keys, perceptual hashes with LSH bands, SemDeDup on CLIP embeddings, and the union-find that keeps one record per group."""
