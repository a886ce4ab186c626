"""constitutional: turn a written constitution into a harmless, non-evasive assistant."""

__version__ = "0.1.0"
