"""Inference: the batched scorer shared by evaluation and serving (docs/architecture.md §3.5–3.6, §4).

- `cora_ray.infer.scorer.Scorer`: checkpoints (CoRA, TALLRec, CoLLM) and the zero-shot base LLM.
- `cora_ray.infer.cf_scorer.CFScorer`: CF-only artifacts through the same `score(...)` call.
- `cora_ray.infer.source.ScorerSource`: a picklable "what to load", for Ray actors.
- `cora_ray.infer.cache.GCache`: the per-user collaborative weight cache used by serving.

Nothing here imports Ray. Submodules are imported on use (torch / transformers load only when needed).
"""
