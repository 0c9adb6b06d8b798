"""GPT Playground: pretrain a small GPT-2-style language model from scratch, inspect it, talk to it."""

__version__ = "0.1.0"
