"""Evaluation and training tasks: each one yields chat conversations and knows how to grade a reply."""
