"""Decoding, orienting, resizing and encoding images: the bytes that go into a shard."""
