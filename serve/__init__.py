"""Ouro's Ray Serve application: an OpenAI-compatible front door to the LoRA-adapted model.

``serve.app:build_app`` builds it (a Serve config file or KubeRay's serveConfigV2 names
it); ``python -m serve`` runs it on one machine.
"""
