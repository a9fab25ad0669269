"""``python -m train_job``: the training cycle and the operator commands.

Commands:
  run       one training cycle: collect → dataset → train → gates → register
  status    versions, aliases, gate results, corrections pending
  promote   point an alias (default: production) at a version
  rollback  move production back to the version it had before
  scopes    personal adapters: every scope with a registered model, and its aliases
  forget    forget a scope: ledger tombstone, registry versions and artifacts deleted
  share     mark a correction for the shared adapter
  (status, promote and rollback take --scope S for a personal adapter)
  export    write the corrections as OpenAI fine-tuning (sft) or preference (dpo) JSONL
  trigger   start a training Job now from the training CronJob (Kubernetes)

Exit codes:
  0  done (run: a version was registered, or there was nothing new to train on)
  1  any other error (trigger --follow: the Job failed)
  2  usage or configuration error (bad flag, config file or value, unknown version)
  3  gates failed (run: nothing registered; promote: version refused without --force)
  4  the MLflow registry is unreachable (run fails within seconds, before any training)
  5  another training cycle is running (run) or a Job of the CronJob is (trigger)
  130/143  interrupted by SIGINT/SIGTERM (run: the MLflow run is marked KILLED)
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import signal
import sys
from collections.abc import Sequence
from dataclasses import fields
from pathlib import Path

from mlflow.exceptions import MlflowException
from transformers import HfArgumentParser

from ouro.errors import OuroError
from ouro.registry import (
    ALIAS_PRODUCTION,
    AdapterRegistry,
    NothingToRollBackError,
    PersonalRegistries,
    RegistryUnavailableError,
    UnknownModelError,
    is_valid_alias,
)
from ouro.scopes import is_valid_scope
from ouro.settings import OuroSettings
from train_job.config import (
    SHARED_FIELDS,
    TrainJobConfig,
    TrainJobConfigError,
    env_layer,
    yaml_layer,
)

logger = logging.getLogger("train_job")

EXIT_OK = 0
EXIT_ERROR = 1
EXIT_USAGE = 2
EXIT_GATES_FAILED = 3
EXIT_REGISTRY_UNAVAILABLE = 4
EXIT_BUSY = 5
EXIT_SIGINT = 130
EXIT_SIGTERM = 143

ADMIN_KEY_ENV = "OURO_ADMIN_API_KEY"
"""Admin key sent with --notify (falls back to the first of OURO_ADMIN_API_KEYS)."""

_EPILOG = __doc__[__doc__.index("Exit codes:") :]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m train_job",
        description="Ouro's training job: turn corrections into a LoRA adapter version, "
        "and manage the versions.",
        epilog=_EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    config_fields = HfArgumentParser(TrainJobConfig, add_help=False)
    run = commands.add_parser(
        "run",
        parents=[config_fields],
        help="one training cycle",
        description="One training cycle. Settings: flags > --config YAML > environment "
        "(OURO_DATA_DIR, OURO_BASE_MODEL, OURO_MLFLOW_TRACKING_URI, "
        "OURO_REGISTERED_MODEL_NAME; OURO_TRAIN_<FIELD> for the rest) > defaults.",
        epilog=_EPILOG,
        formatter_class=_HelpFormatter,
    )
    run.add_argument("--config", metavar="YAML", help="a YAML file of field: value")
    run.add_argument("--json", action="store_true", help="print the result as JSON")

    status = commands.add_parser("status", help="versions, aliases, gates, pending corrections")
    _registry_options(status)
    status.add_argument("--json", action="store_true", help="print JSON")

    promote = commands.add_parser("promote", help="point an alias at a version")
    _registry_options(promote)
    promote.add_argument("version", type=_version_number, help="version number (3 or v3)")
    promote.add_argument("--alias", type=_alias, default=ALIAS_PRODUCTION, help="alias to move")
    promote.add_argument("--force", action="store_true", help="even if its gates failed")
    _notify_option(promote)

    rollback = commands.add_parser("rollback", help="move an alias back to its previous version")
    _registry_options(rollback)
    rollback.add_argument(
        "--alias", type=_alias, default=ALIAS_PRODUCTION, help="alias to move back"
    )
    _notify_option(rollback)

    scopes = commands.add_parser("scopes", help="scopes with a personal adapter, and aliases")
    _registry_options(scopes, scoped=False)
    scopes.add_argument("--json", action="store_true", help="print JSON")

    forget = commands.add_parser(
        "forget", help="forget a scope (and its user scopes): corrections and adapters"
    )
    _registry_options(forget, scoped=False)
    forget.add_argument("scope", type=_scope, help="'<key name>' or '<key name>/<user>'")
    forget.add_argument("--reason", help="a note kept in the tombstone")
    _notify_option(forget)

    share = commands.add_parser("share", help="mark a correction for the shared adapter")
    _registry_options(share, scoped=False)
    share.add_argument("record_id", help="the correction's id (fb-...)")
    share.add_argument("--reason", help="a note kept with the mark")

    export = commands.add_parser("export", help="write the corrections as fine-tuning JSONL")
    export.add_argument(
        "--format",
        choices=("sft", "dpo"),
        required=True,
        help="sft: {messages}; dpo: {input, preferred_output, non_preferred_output}",
    )
    export.add_argument("--out", required=True, metavar="FILE", help="output file ('-': stdout)")
    export.add_argument("--data-dir", help="data dir (default: OURO_DATA_DIR or ./.ouro)")

    trigger = commands.add_parser("trigger", help="start a training Job from the CronJob")
    trigger.add_argument("--cronjob", required=True, help="name of the training CronJob")
    trigger.add_argument(
        "--namespace",
        default=None,
        help="namespace (default: the pod's own in a cluster, else 'default')",
    )
    trigger.add_argument("--follow", action="store_true", help="print logs until the Job ends")
    trigger.add_argument(
        "--kubeconfig",
        help="kubeconfig file (default: in-cluster, then KUBECONFIG / ~/.kube/config)",
    )
    trigger.add_argument("--context", help="kubeconfig context")
    trigger.add_argument(
        "--timeout", type=float, default=4 * 3600, help="seconds to follow before giving up"
    )
    return parser


class _HelpFormatter(argparse.ArgumentDefaultsHelpFormatter, argparse.RawDescriptionHelpFormatter):
    pass


def _registry_options(parser: argparse.ArgumentParser, *, scoped: bool = True) -> None:
    parser.add_argument("--data-dir", help="data dir (default: OURO_DATA_DIR or ./.ouro)")
    if scoped:
        parser.add_argument(
            "--scope", type=_scope, help="a personal scope's adapter instead of the shared one"
        )
    parser.add_argument(
        "--mlflow-tracking-uri",
        "--mlflow-uri",
        dest="mlflow_tracking_uri",
        help="MLflow URI (default: OURO_MLFLOW_TRACKING_URI or the local store)",
    )
    parser.add_argument(
        "--registered-model-name",
        help="registered model (default: OURO_REGISTERED_MODEL_NAME or ouro-adapter)",
    )


def _notify_option(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--notify",
        metavar="URL",
        help=f"Serve's base URL: ask it to re-read the registry now "
        f"(admin key from {ADMIN_KEY_ENV})",
    )


def _version_number(text: str) -> int:
    digits = text[1:] if text[:1] in ("v", "V") else text
    if not digits.isdigit() or int(digits) < 1:
        raise argparse.ArgumentTypeError(f"not a version number: {text!r}")
    return int(digits)


def _scope(text: str) -> str:
    if not is_valid_scope(text):
        raise argparse.ArgumentTypeError(f"not a valid scope: {text!r}")
    return text


def _alias(text: str) -> str:
    if not is_valid_alias(text):
        raise argparse.ArgumentTypeError(f"not a valid alias name: {text!r}")
    return text


def parse_run_config(
    parser: argparse.ArgumentParser, argv: Sequence[str], environ: dict[str, str] | None = None
) -> tuple[argparse.Namespace, TrainJobConfig]:
    """Parse ``run``'s flags over the YAML file over the environment over the defaults."""
    args = parser.parse_args(argv)
    layers = env_layer(environ)
    if args.config:
        layers.update(yaml_layer(Path(args.config)))
    if layers:
        # Lower layers become the flags' defaults, so a flag given on the command line wins.
        run_parser = _subparser(parser, "run")
        run_parser.set_defaults(**layers)
        args = parser.parse_args(argv)
    values = {item.name: getattr(args, item.name) for item in fields(TrainJobConfig)}
    return args, TrainJobConfig(**values)


def _subparser(parser: argparse.ArgumentParser, name: str) -> argparse.ArgumentParser:
    for action in parser._subparsers._group_actions:  # argparse keeps subparsers here
        if isinstance(action, argparse._SubParsersAction):
            return action.choices[name]
    raise KeyError(name)


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    _setup_logging()
    # MLflow writes run links to stdout when a run ends; stdout is for the command's result.
    os.environ.setdefault("MLFLOW_SUPPRESS_PRINTING_URL_TO_STDOUT", "true")
    parser = build_parser()
    try:
        if argv[:1] == ["run"]:
            args, config = parse_run_config(parser, argv)
            return _run(args, config)
        args = parser.parse_args(argv)
        return _COMMANDS[args.command](args)
    except TrainJobConfigError as exc:
        logger.error("%s", exc)
        return EXIT_USAGE
    except RegistryUnavailableError as exc:
        logger.error("MLflow registry unreachable: %s", exc)
        return EXIT_REGISTRY_UNAVAILABLE
    except UnknownModelError as exc:
        logger.error("%s", exc)
        return EXIT_USAGE
    except MlflowException as exc:
        logger.error("MLflow failed: %s", exc.message)
        return EXIT_REGISTRY_UNAVAILABLE
    except OuroError as exc:
        logger.error("%s", exc)
        return EXIT_ERROR


def _settings(args: argparse.Namespace) -> OuroSettings:
    overrides = {
        name: value for name in SHARED_FIELDS if (value := getattr(args, name, None)) is not None
    }
    return OuroSettings(**overrides)


def _registry(settings: OuroSettings, scope: str | None = None) -> AdapterRegistry:
    if scope is not None:
        return PersonalRegistries.from_settings(settings).for_scope(scope)
    return AdapterRegistry(settings.tracking_uri, settings.registered_model_name)


def _run(args: argparse.Namespace, config: TrainJobConfig) -> int:
    from train_job.cycle import CycleInterrupted, Outcome, run_cycle
    from train_job.lock import CycleBusyError

    def interrupted(signum, frame):
        raise CycleInterrupted(f"signal {signum}")

    settings = config.settings()
    previous = signal.signal(signal.SIGTERM, interrupted)
    try:
        result = run_cycle(config, settings)
    except CycleBusyError as exc:
        logger.error("%s", exc)
        return EXIT_BUSY
    except CycleInterrupted:
        logger.error("interrupted by SIGTERM: nothing registered")
        return EXIT_SIGTERM
    except KeyboardInterrupt:
        logger.error("interrupted: nothing registered")
        return EXIT_SIGINT
    finally:
        signal.signal(signal.SIGTERM, previous)

    if result.outcome is Outcome.REGISTERED and result.promoted and config.notify_url:
        from train_job.commands import notify_serve

        notify_serve(config.notify_url, _admin_key(settings))
    if args.json:
        print(json.dumps(_result_dict(result), indent=2))
    else:
        print(_format_result(result))
        for personal in result.personal:
            print(f"\nscope {personal.scope}:\n{_format_result(personal)}")
    failed = [r for r in (result, *result.personal) if r.outcome is Outcome.GATES_FAILED]
    return EXIT_GATES_FAILED if failed else EXIT_OK


def _result_dict(result) -> dict:
    return {
        "scope": result.scope,
        "registered_model": result.registered_model,
        "personal": [_result_dict(personal) for personal in result.personal],
        "outcome": result.outcome.value,
        "message": result.message,
        "version": result.version,
        "run_id": result.run_id,
        "promoted": result.promoted,
        "gates": None if result.report is None else json.loads(result.report.checks_json()),
        "gates_passed": None if result.report is None else result.report.passed,
        "timings_s": {k: round(v, 2) for k, v in result.timings.items()},
    }


def _format_result(result) -> str:
    lines = [result.message]
    if result.run_id:
        lines.append(f"MLflow run: {result.run_id}")
    if result.report is not None:
        lines.append(f"gates (baseline: {result.report.baseline}):")
        for check in result.report.checks:
            value = "-" if check.value is None else f"{check.value:.3f}"
            threshold = "-" if check.threshold is None else f"{check.comparison} {check.threshold}"
            verdict = {None: "reported", True: "pass", False: "FAIL"}[check.passed]
            lines.append(
                f"  {check.name:<20} {value:>8}  {threshold:<10} {verdict:<8} {check.detail}"
            )
    if result.timings:
        lines.append(
            "timings: " + " | ".join(f"{k} {_seconds(v)}" for k, v in result.timings.items())
        )
    return "\n".join(lines)


def _seconds(value: float) -> str:
    return f"{value:.1f} s" if value >= 0.1 else f"{value:.2f} s"


def _status(args: argparse.Namespace) -> int:
    from train_job.commands import format_status, status

    settings = _settings(args)
    info = status(_registry(settings, args.scope), settings)
    print(json.dumps(info, indent=2) if args.json else format_status(info))
    return EXIT_OK


def _promote(args: argparse.Namespace) -> int:
    from train_job.commands import PromotionRefusedError, notify_serve, promote

    settings = _settings(args)
    try:
        promote(_registry(settings, args.scope), args.version, args.alias, force=args.force)
    except PromotionRefusedError as exc:
        logger.error("%s", exc)
        return EXIT_GATES_FAILED
    print(f"{args.alias} -> v{args.version}")
    if args.notify:
        notify_serve(args.notify, _admin_key(settings))
    return EXIT_OK


def _rollback(args: argparse.Namespace) -> int:
    from train_job.commands import notify_serve, rollback

    settings = _settings(args)
    try:
        version = rollback(_registry(settings, args.scope), args.alias)
    except NothingToRollBackError as exc:
        logger.error("%s", exc)
        return EXIT_ERROR
    print(f"{args.alias} -> " + (f"v{version}" if version is not None else "unset (base model)"))
    if args.notify:
        notify_serve(args.notify, _admin_key(settings))
    return EXIT_OK


def _scopes(args: argparse.Namespace) -> int:
    settings = _settings(args)
    scopes = PersonalRegistries.from_settings(settings).production_by_scope()
    if args.json:
        print(json.dumps(scopes, indent=2, sort_keys=True))
        return EXIT_OK
    if not scopes:
        print("no personal adapters registered")
    for scope, aliases in sorted(scopes.items()):
        described = ", ".join(f"{a} -> v{v}" for a, v in sorted(aliases.items())) or "no aliases"
        print(f"{scope}: {described}")
    return EXIT_OK


def _forget(args: argparse.Namespace) -> int:
    from ouro.ledger import FeedbackLedger
    from ouro.personal import command_writer_id, forget_scope
    from train_job.commands import notify_serve

    settings = _settings(args)
    with FeedbackLedger.from_settings(settings, command_writer_id("forget")) as ledger:
        result = forget_scope(
            ledger, PersonalRegistries.from_settings(settings), args.scope, reason=args.reason
        )
    print(
        f"forgot {args.scope}: {result.forgotten_records} correction(s) hidden by tombstone "
        f"{result.tombstone.id}; deleted {len(result.deleted_models)} registered model(s) "
        f"and {result.deleted_runs} run(s)"
    )
    if args.notify:
        notify_serve(args.notify, _admin_key(settings))
    return EXIT_OK


def _share(args: argparse.Namespace) -> int:
    from ouro.ledger import FeedbackLedger
    from ouro.personal import UnknownCorrectionError, command_writer_id, share_correction

    settings = _settings(args)
    with FeedbackLedger.from_settings(settings, command_writer_id("share")) as ledger:
        try:
            mark = share_correction(ledger, args.record_id, reason=args.reason)
        except UnknownCorrectionError as exc:
            logger.error("%s", exc)
            return EXIT_USAGE
    print(f"{args.record_id} marked shared ({mark.id}); the next cycle trains on it")
    return EXIT_OK


def _export(args: argparse.Namespace) -> int:
    from train_job.export import export_ledger

    settings = _settings(args)
    count = export_ledger(settings.ledger_dir, args.format, args.out)
    if args.out != "-":
        print(f"wrote {count} {args.format} records to {args.out}")
    return EXIT_OK


def _trigger(args: argparse.Namespace) -> int:
    from train_job.trigger import TriggerBusyError, api_client, trigger

    namespace = args.namespace or _pod_namespace() or "default"
    try:
        result = trigger(
            api_client(args.kubeconfig, args.context),
            args.cronjob,
            namespace,
            follow=args.follow,
            timeout_s=args.timeout,
        )
    except TriggerBusyError as exc:
        logger.error("%s", exc)
        return EXIT_BUSY
    print(f"job/{result.job_name} created in {result.namespace}")
    if result.succeeded is False:
        logger.error("job/%s failed", result.job_name)
        return EXIT_ERROR
    return EXIT_OK


def _pod_namespace() -> str | None:
    path = "/var/run/secrets/kubernetes.io/serviceaccount/namespace"
    try:
        with open(path, encoding="utf-8") as handle:
            return handle.read().strip() or None
    except OSError:
        return None


def _admin_key(settings: OuroSettings) -> str | None:
    return os.environ.get(ADMIN_KEY_ENV) or settings.first_admin_key()


def _setup_logging() -> None:
    level = os.environ.get("OURO_LOG_LEVEL", "INFO").upper()
    logging.basicConfig(
        level=level, format="%(asctime)s %(levelname)s %(name)s: %(message)s", stream=sys.stderr
    )
    for noisy in ("httpx", "urllib3", "mlflow", "alembic", "filelock"):
        logging.getLogger(noisy).setLevel(max(logging.WARNING, logging.getLogger().level))


_COMMANDS = {
    "status": _status,
    "promote": _promote,
    "rollback": _rollback,
    "scopes": _scopes,
    "forget": _forget,
    "share": _share,
    "export": _export,
    "trigger": _trigger,
}
