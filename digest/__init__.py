"""digest: a personalised daily email of new listings that match what you care about."""

__version__ = "0.1.0"
