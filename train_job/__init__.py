"""Ouro's training job: corrections → LoRA adapter → quality gates → MLflow registry.

``python -m train_job run`` runs one cycle (``cycle.run_cycle``); ``status``, ``promote``
and ``rollback`` manage the registered versions; ``export`` writes the corrections for other
tools; ``trigger`` starts a training Job from the Kubernetes CronJob. See ``cli.py`` for
the commands and their exit codes, ``config.py`` for the settings.
"""
