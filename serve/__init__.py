"""Ray Serve application for cora_ray (wiring only; the serving logic is cora_ray.infer.service).

`serve run serve.local.config` / `serve run serve.config` import `serve.app:build_app`."""
