"""Burst and blind image super-resolution toolkit (BSRT, DCLS): a config-driven experiment runner.

Importing ``codes`` imports nothing heavy; each subpackage imports its modules only when a name is built.
"""
__version__ = '0.1.0'
