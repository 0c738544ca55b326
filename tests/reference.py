"""The model card's reference code (the one copy: ``e5tools.reference``, which imports nothing from
the product): the ground truth the tests compare against."""

from e5tools.reference import average_pool, card_model, reference_embeddings

__all__ = ["average_pool", "card_model", "reference_embeddings"]
