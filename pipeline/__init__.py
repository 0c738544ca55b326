"""e5-embed: a Ray Data streaming job that embeds text corpora with E5 models."""

__version__ = "0.1.0"
