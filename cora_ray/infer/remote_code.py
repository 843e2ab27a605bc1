"""Operator consent for `trust_remote_code`: a stored config never switches it on by itself.

`llm.trust_remote_code: true` makes transformers import and run Python files shipped with the base LLM. A
checkpoint's manifest carries the config it was trained with, so a checkpoint from elsewhere (a Serve
`user_config.checkpoint_uri`, an `--checkpoint` of jobs/evaluate.py) could ask for it. Evaluation and
serving load such a model only when the operator allowed it where they start the process:

    python jobs/evaluate.py --checkpoint URI --trust-remote-code ...     (also jobs/cf_signal.py, jobs/compare.py)
    serve config, application args:  trust_remote_code: true

Without that consent the load is refused with a `ConfigError` naming the source and the flag. With it, the
model is loaded with what its config says (consent allows remote code, it does not force it).
"""

from __future__ import annotations

from cora_ray.errors import ConfigError

CONSENT = "--trust-remote-code (jobs/evaluate.py, jobs/cf_signal.py, jobs/compare.py) or trust_remote_code: true (serve application args)"


def require_consent(llm_cfg: object, allowed: bool, source: str) -> None:
    """Refuse a config whose `llm.trust_remote_code` is true unless the operator `allowed` it.

    `llm_cfg`: an LLMConfig (or any object with `trust_remote_code` and `name_or_path`); `source`: what the
    config came from, for the message (e.g. "checkpoint s3://bucket/runs/x/best")."""
    if getattr(llm_cfg, "trust_remote_code", False) and not allowed:
        raise ConfigError(
            f"{source} asks for llm.trust_remote_code=true: loading its base LLM "
            f"{getattr(llm_cfg, 'name_or_path', '?')} would run Python code shipped with that model. Refused "
            f"without the operator's consent; if you trust it, pass {CONSENT}"
        )
