"""fleetpy: a distributed init system for clusters of Linux hosts, a modern successor to CoreOS fleet."""

__version__ = "0.1.0"
