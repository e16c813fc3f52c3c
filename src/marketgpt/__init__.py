"""MarketGPT: GPT-style transformers on tokenized market candles of many assets."""

__version__ = "0.1.0"
