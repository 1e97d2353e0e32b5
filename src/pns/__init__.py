"""pns: an open privacy number service, wire-compatible with NXCloud's PNS API."""

__version__ = "0.1.0"
