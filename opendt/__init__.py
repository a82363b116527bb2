"""OpenDT: an open digital twin for datacenters."""

__version__ = "0.1.0"
