"""ftml: detect incidents in metrics, diagnose their cause, recover safely."""

__version__ = "0.1.0"
