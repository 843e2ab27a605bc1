"""cora_ray: CoRA (Collaborative LoRA) LLM recommender on Ray — train, evaluate, serve."""

__version__ = "0.1.0"
