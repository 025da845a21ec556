"""terrapipe: batch production pipeline for Earth observation."""

__version__ = "0.1.0"
