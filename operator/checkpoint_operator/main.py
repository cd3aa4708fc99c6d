"""The operator's table of contents: kopf decorators, each a line or two that hands over to
handlers/. Settings and the process entry point (`checkpoint-operator run`) are below."""

from __future__ import annotations

import hashlib
import logging
import os
from typing import Optional

import kopf

from checkpoint_operator import GROUP, PROTECTION_FINALIZER, VERSION
from checkpoint_operator.config import OperatorConfig
from checkpoint_operator.handlers import checkpoint, trainingjob
from checkpoint_operator.handlers.context import Context
from checkpoint_operator import metrics

FINALIZER = PROTECTION_FINALIZER
PEERING_NAME = "checkpoint-operator"
CHECKPOINTS = (GROUP, VERSION, "checkpoints")
TRAINING_JOBS = (GROUP, VERSION, "trainingjobs")
# Timers are declared at import time, so their interval comes from the environment then.
INTERVAL = OperatorConfig.from_env().reconcile_interval
RETRY_BACKOFF = max(1.0, INTERVAL * 5)  # after an unexpected error (kopf's default is 60 s)


def _ctx(memo: kopf.Memo) -> Context:
    return memo["ctx"]


def _guarded(kind: str, fn, *args) -> None:
    try:
        fn(*args)
    except kopf.TemporaryError:
        raise
    except Exception:
        metrics.RECONCILE_ERRORS.labels(kind).inc()
        raise


# --- TrainingJob ---------------------------------------------------------------------------------

@kopf.timer(*TRAINING_JOBS, interval=INTERVAL, backoff=RETRY_BACKOFF, when=lambda status, **_: status.get("phase") not in ("Succeeded", "Failed"))
def reconcile_training_job(namespace: str, name: str, memo: kopf.Memo, **_) -> None:
    _guarded("TrainingJob", trainingjob.reconcile, _ctx(memo), namespace, name)


@kopf.on.delete(*TRAINING_JOBS, backoff=RETRY_BACKOFF)
def release_training_job(body: kopf.Body, memo: kopf.Memo, **_) -> None:
    _guarded("TrainingJob", trainingjob.on_delete, _ctx(memo), dict(body))


# --- Checkpoint ----------------------------------------------------------------------------------

@kopf.timer(*CHECKPOINTS, interval=INTERVAL, backoff=RETRY_BACKOFF,
            when=lambda status, **_: status.get("phase") not in ("Ready", "Failed") or bool(status.get("usedBy")))
def reconcile_checkpoint(namespace: str, name: str, memo: kopf.Memo, **_) -> None:
    _guarded("Checkpoint", checkpoint.reconcile, _ctx(memo), namespace, name)


@kopf.on.delete(*CHECKPOINTS)
def protect_checkpoint_in_use(body: kopf.Body, memo: kopf.Memo, **_) -> None:
    _guarded("Checkpoint", checkpoint.guard_deletion, _ctx(memo), dict(body), INTERVAL)


# --- metrics: objects by phase, from every change kopf sees (also right after a restart) ---------

@kopf.on.event(*CHECKPOINTS)
@kopf.on.event(*TRAINING_JOBS)
def count_by_phase(event: dict, body: kopf.Body, **_) -> None:
    kind, uid = body.get("kind") or "", body.get("metadata", {}).get("uid", "")
    if event.get("type") == "DELETED":
        metrics.PHASES.forget(kind, uid)
    else:
        metrics.PHASES.observe(kind, uid, body.get("status", {}).get("phase"))


# --- settings and process ------------------------------------------------------------------------

def configure_settings(settings: kopf.OperatorSettings, *, peering_priority: Optional[int] = None) -> None:
    settings.persistence.finalizer = FINALIZER
    # Keep kopf's bookkeeping in annotations: the CRD schema would prune it from status.
    settings.persistence.progress_storage = kopf.AnnotationsProgressStorage(prefix=GROUP)
    settings.persistence.diffbase_storage = kopf.AnnotationsDiffBaseStorage(prefix=GROUP)
    settings.posting.level = logging.WARNING  # our own events are explicit; kopf adds only its errors
    settings.peering.name = PEERING_NAME
    if peering_priority is not None:
        settings.peering.priority = peering_priority
    settings.execution.max_workers = 20
    # A sync timer caught mid-run when deletion starts finishes its pass in well under a
    # second; check for it often instead of kopf's default of once a minute.
    settings.background.cancellation_polling = min(INTERVAL, 1.0)
    settings.background.instant_exit_timeout = 2.0
    settings.watching.server_timeout = 300
    settings.networking.request_timeout = 60


def peering_priority_for(pod_name: str) -> int:
    """Distinct per replica, so two replicas never freeze each other at an equal priority."""
    return 100 + int(hashlib.sha256(pod_name.encode()).hexdigest()[:6], 16) % 10000


def make_memo(ctx: Context) -> kopf.Memo:
    return kopf.Memo(ctx=ctx)


def run_operator(args) -> int:
    """`checkpoint-operator run`: the real process, in a cluster or against a kubeconfig."""
    from checkpoint_operator.kube import Kube
    from checkpoint_operator.logs import configure_logging
    import asyncio
    from prometheus_client import start_http_server

    config = OperatorConfig.from_env()
    configure_logging(args.log_format or os.environ.get("CKPT_LOG_FORMAT", "text"))
    metrics_port = args.metrics_port if args.metrics_port is not None else 8080
    if metrics_port:
        start_http_server(metrics_port)
    liveness_port = args.liveness_port if args.liveness_port is not None else 8081

    settings = kopf.OperatorSettings()
    configure_settings(settings, peering_priority=peering_priority_for(os.environ.get("POD_NAME", os.uname().nodename)))
    namespaces = args.namespace or []
    ctx = Context(kube=Kube.from_environment(), config=config)
    asyncio.run(kopf.operator(
        settings=settings, clusterwide=not namespaces, namespaces=namespaces, standalone=args.standalone,
        liveness_endpoint=f"http://0.0.0.0:{liveness_port}/healthz" if liveness_port else None,
        memo=make_memo(ctx)))
    return 0
