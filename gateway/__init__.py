"""Connector gateway: protocol adapters, durable intake, routing and lineage."""

__version__ = "0.1.0"
