"""The chat pipeline: recall, language, style, prompt budget, routing and persistence."""

from mongars_edge.chat.pipeline import ChatPipeline, Prepared, Turn

__all__ = ["ChatPipeline", "Prepared", "Turn"]
