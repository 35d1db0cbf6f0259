"""Servers and generated data for tests, benchmarks and the demo (as ``apache_beam.testing``): nothing here runs in a user's pipeline."""
