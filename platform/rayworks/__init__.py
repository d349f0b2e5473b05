"""rayworks: raw text to a served LLM on one Ray cluster."""
__version__ = "0.1.0"
