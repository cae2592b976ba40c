"""pytest-pdslo: LLM-serving performance methodology as a pytest regression suite."""

__version__ = "0.1.0"
