"""``python -m train_job``: the training cycle and the operator commands.

Commands:
  run       one training cycle: collect → dataset → train → gates → register
  status    versions, aliases, gate results, corrections pending
  promote   point an alias (default: production) at a version
  rollback  move production back to the version it had before
  canary    the running canary: status, promote, abort, pause, resume
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
from pathlib import Path

from mlflow.exceptions import MlflowException

from ouro.configuration import ConfigError, add_flags, load_settings, read_config_file
from ouro.errors import OuroError
from ouro.names import ALIAS_PRODUCTION, UnknownModelError, is_valid_alias
from ouro.notify import notify_serve
from ouro.registry import (
    AdapterRegistry,
    NothingToRollBackError,
    PersonalRegistries,
    RegistryUnavailableError,
)
from ouro.scopes import is_valid_scope
from ouro.settings import OuroSettings
from train_job.config import TrainJobConfig, check_recipe_matches, recipe_for

logger = logging.getLogger("train_job")

EXIT_OK = 0
EXIT_ERROR = 1
EXIT_USAGE = 2
EXIT_GATES_FAILED = 3
EXIT_REGISTRY_UNAVAILABLE = 4
EXIT_BUSY = 5
EXIT_SIGINT = 130
EXIT_SIGTERM = 143

COMMAND_SETTINGS = ("data_dir", "feedback_dir", "mlflow_tracking_uri", "registered_model_name")
"""OuroSettings fields every command takes as flags (where the ledger and registry are)."""
RUN_SETTINGS = (
    *COMMAND_SETTINGS,
    "base_model",
    "device",
    "quantization",
    "system_prompt",
    "max_context_tokens",
    "personal_adapters",
    "consensus_scopes",
    "consensus_similarity",
)
"""OuroSettings fields ``run`` also takes as flags (the model, and what decides scopes)."""

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

    run = commands.add_parser(
        "run",
        help="one training cycle",
        description="One training cycle. Settings: flags > --config YAML > environment "
        "(OURO_<FIELD> for Ouro's shared settings, OURO_TRAIN_<FIELD> for the recipe) > "
        "defaults; every setting is listed in docs/configuration.md.",
        epilog=_EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    _settings_options(run, RUN_SETTINGS)
    add_flags(run, TrainJobConfig)
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

    canary = commands.add_parser("canary", help="the canary: status, promote, abort, pause, resume")
    _registry_options(canary, scoped=False)
    canary.add_argument(
        "action",
        choices=("status", "promote", "abort", "pause", "resume"),
        help="status: its share and both sides' signals; promote: production <- canary; "
        "abort: roll it back; pause/resume: hold its share and every decision",
    )
    canary.add_argument("--reason", help="a note kept on the version (promote, abort)")
    canary.add_argument("--json", action="store_true", help="print JSON (status)")
    _notify_option(canary)

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
    _settings_options(export)

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


def _settings_options(
    parser: argparse.ArgumentParser, names: Sequence[str] = COMMAND_SETTINGS
) -> None:
    parser.add_argument(
        "--config",
        type=Path,
        metavar="YAML",
        help="a YAML file of setting: value (any OuroSettings or TrainJobConfig field)",
    )
    add_flags(parser, OuroSettings, names)


def _registry_options(parser: argparse.ArgumentParser, *, scoped: bool = True) -> None:
    _settings_options(parser)
    if scoped:
        parser.add_argument(
            "--scope", type=_scope, help="a personal scope's adapter instead of the shared one"
        )


def _notify_option(parser: argparse.ArgumentParser) -> None:
    # The same flag as `run --notify-url` (a TrainJobConfig setting); --notify is its old name.
    parser.add_argument(
        "--notify-url",
        "--notify",
        dest="notify",
        metavar="URL",
        help="Serve's base URL: ask it to re-read the registry now "
        "(sends the admin_api_key setting, OURO_ADMIN_API_KEY)",
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


def load_command(
    argv: Sequence[str],
) -> tuple[argparse.Namespace, OuroSettings, TrainJobConfig | None]:
    """Parse a command line; its settings and (for ``run``) its recipe, each from the flags
    given, the ``--config`` file, the environment and the defaults."""
    args = build_parser().parse_args(argv)
    config_file = getattr(args, "config", None)
    settings = load_settings(OuroSettings, args, config_file, known=[TrainJobConfig])
    config = None
    if args.command == "run":
        # No --config: the recipe for the configured base model (recipe_for logs which).
        recipe = config_file or recipe_for(settings.base_model)
        config = load_settings(TrainJobConfig, args, recipe, known=[OuroSettings])
        config.from_recipe(recipe)
        if config_file is not None:
            check_recipe_matches(
                config_file, read_config_file(config_file).get("base_model"), settings.base_model
            )
            logger.info(
                "training recipe: %s, from --config (base model %s)",
                config.recipe,
                settings.base_model,
            )
    return args, settings, config


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    _setup_logging()
    # MLflow writes run links to stdout when a run ends; stdout is for the command's result.
    os.environ.setdefault("MLFLOW_SUPPRESS_PRINTING_URL_TO_STDOUT", "true")
    try:
        args, settings, config = load_command(argv)
        logging.getLogger().setLevel(settings.log_level)
        if config is not None:
            return _run(args, settings, config)
        return _COMMANDS[args.command](args, settings)
    except ConfigError as exc:
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


def _run(args: argparse.Namespace, settings: OuroSettings, config: TrainJobConfig) -> int:
    from train_job.cycle import CycleInterrupted, Outcome, run_cycle
    from train_job.lock import CycleBusyError
    from train_job.register import Release

    def interrupted(signum, frame):
        raise CycleInterrupted(f"signal {signum}")

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

    if result.release in (Release.PRODUCTION, Release.CANARY) and config.notify_url:
        notify_serve(config.notify_url, settings.first_admin_key())
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
        "promoted": result.release == "production",
        "release": None if result.release is None else result.release.value,
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


def _status(args: argparse.Namespace, settings: OuroSettings) -> int:
    from train_job.commands import format_status, status

    info = status(AdapterRegistry.from_settings(settings, args.scope), settings)
    print(json.dumps(info, indent=2) if args.json else format_status(info))
    return EXIT_OK


def _promote(args: argparse.Namespace, settings: OuroSettings) -> int:
    from train_job.commands import PromotionRefusedError, promote

    try:
        promote(
            AdapterRegistry.from_settings(settings, args.scope),
            args.version,
            args.alias,
            force=args.force,
        )
    except PromotionRefusedError as exc:
        logger.error("%s", exc)
        return EXIT_GATES_FAILED
    print(f"{args.alias} -> v{args.version}")
    if args.notify:
        notify_serve(args.notify, settings.first_admin_key())
    return EXIT_OK


def _rollback(args: argparse.Namespace, settings: OuroSettings) -> int:
    from train_job.commands import rollback

    try:
        version = rollback(AdapterRegistry.from_settings(settings, args.scope), args.alias)
    except NothingToRollBackError as exc:
        logger.error("%s", exc)
        return EXIT_ERROR
    print(f"{args.alias} -> " + (f"v{version}" if version is not None else "unset (base model)"))
    if args.notify:
        notify_serve(args.notify, settings.first_admin_key())
    return EXIT_OK


def _canary(args: argparse.Namespace, settings: OuroSettings) -> int:
    from ouro.rollout import CanaryPolicy, NoCanaryError, Rollout, format_canary

    rollout = Rollout(AdapterRegistry.from_settings(settings), CanaryPolicy.from_settings(settings))
    by = f"operator (python -m train_job canary {args.action})"
    try:
        if args.action == "status":
            state = rollout.state()
            if args.json:
                print(json.dumps(None if state is None else state.model_dump(), indent=2))
            else:
                print(format_canary(state, rollout.policy))
            return EXIT_OK
        if args.action in ("pause", "resume"):
            state = rollout.set_paused(args.action == "pause")
            print(f"canary v{state.version} {args.action}d at {state.share}%")
        else:
            end = rollout.promote if args.action == "promote" else rollout.abort
            record = end(by, args.reason) if args.reason else end(by)
            print(f"canary {args.action}: {record.decision} ({record.reason})")
    except NoCanaryError as exc:
        logger.error("%s", exc)
        return EXIT_ERROR
    if args.notify:
        notify_serve(args.notify, settings.first_admin_key())
    return EXIT_OK


def _scopes(args: argparse.Namespace, settings: OuroSettings) -> int:
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


def _forget(args: argparse.Namespace, settings: OuroSettings) -> int:
    from ouro.ledger import FeedbackLedger
    from ouro.personal import command_writer_id, forget_scope

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
        notify_serve(args.notify, settings.first_admin_key())
    return EXIT_OK


def _share(args: argparse.Namespace, settings: OuroSettings) -> int:
    from ouro.ledger import FeedbackLedger
    from ouro.personal import UnknownCorrectionError, command_writer_id, share_correction

    with FeedbackLedger.from_settings(settings, command_writer_id("share")) as ledger:
        try:
            mark = share_correction(ledger, args.record_id, reason=args.reason)
        except UnknownCorrectionError as exc:
            logger.error("%s", exc)
            return EXIT_USAGE
    print(f"{args.record_id} marked shared ({mark.id}); the next cycle trains on it")
    return EXIT_OK


def _export(args: argparse.Namespace, settings: OuroSettings) -> int:
    from train_job.export import export_ledger

    count = export_ledger(settings.ledger_dir, args.format, args.out)
    if args.out != "-":
        print(f"wrote {count} {args.format} records to {args.out}")
    return EXIT_OK


def _trigger(args: argparse.Namespace, settings: OuroSettings) -> int:
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


def _setup_logging() -> None:
    """Log to stderr at INFO until the settings say otherwise (``log_level``)."""
    logging.basicConfig(
        level=logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )
    for noisy in ("httpx", "urllib3", "mlflow", "alembic", "filelock"):
        logging.getLogger(noisy).setLevel(logging.WARNING)


_COMMANDS = {
    "status": _status,
    "promote": _promote,
    "rollback": _rollback,
    "canary": _canary,
    "scopes": _scopes,
    "forget": _forget,
    "share": _share,
    "export": _export,
    "trigger": _trigger,
}
