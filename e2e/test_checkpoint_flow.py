"""The checkpoint contract on a real cluster, once per store (volume, s3):

train → its output directories become Ready Checkpoints → a second job consumes the latest one
read-only → deleting that Checkpoint while the consumer runs is refused (object stays, Warning
event) → the deletion completes by itself once the consumer finishes.
"""

from __future__ import annotations

import time

import pytest

from conftest import S3_BUCKET, Cluster

IMAGE = "busybox:1.36"
STEPS = (100, 200, 300)

TRAIN_SCRIPT = """\
set -eu
for step in {steps}; do
  mkdir -p "$CHECKPOINT_OUTPUT_DIR/step-$step"
  echo "weights after step $step" > "$CHECKPOINT_OUTPUT_DIR/step-$step/model.bin"
  echo "{{\\"global_step\\": $step}}" > "$CHECKPOINT_OUTPUT_DIR/step-$step/trainer_state.json"
done
# a half-written checkpoint the snapshot must skip
mkdir -p "$CHECKPOINT_OUTPUT_DIR/step-400.tmp"
echo partial > "$CHECKPOINT_OUTPUT_DIR/step-400.tmp/model.bin"
ls -lR "$CHECKPOINT_OUTPUT_DIR"
"""

# Proves the input is there and read-only, then holds the checkpoint in use until the test
# creates /tmp/release in the container.
CONSUME_SCRIPT = """\
set -eu
echo "CHECKPOINT_INPUT_PATH=$CHECKPOINT_INPUT_PATH CHECKPOINT_INPUT_NAMES=$CHECKPOINT_INPUT_NAMES"
grep -q "weights after step {latest}" "$CHECKPOINT_INPUT_PATH/model.bin"
test -r "$CHECKPOINT_INPUT_PATH/trainer_state.json"
if touch "$CHECKPOINT_INPUT_PATH/written-by-consumer" 2>/dev/null; then
  echo "FAIL: the input checkpoint is writable" >&2; exit 1
fi
if rm -f "$CHECKPOINT_INPUT_PATH/model.bin" 2>/dev/null && [ ! -e "$CHECKPOINT_INPUT_PATH/model.bin" ]; then
  echo "FAIL: a file of the input checkpoint could be deleted" >&2; exit 1
fi
echo "input is read-only"
touch /tmp/input-verified
while [ ! -e /tmp/release ]; do sleep 1; done
echo released
"""


def training_job(name: str, script: str, *, inputs: list[dict] | None = None, output: bool = True) -> dict:
    return {
        "apiVersion": "ckpt.dev/v1alpha1",
        "kind": "TrainingJob",
        "metadata": {"name": name},
        "spec": {
            "checkpoints": inputs or [],
            "output": {"enabled": output, "size": "1Gi"} if output else {"enabled": False},
            "backoffLimit": 0,
            "activeDeadlineSeconds": 900,
            "template": {"spec": {
                "restartPolicy": "Never",
                "containers": [{"name": "main", "image": IMAGE, "imagePullPolicy": "IfNotPresent",
                                "command": ["sh", "-c", script]}],
            }},
        },
    }


def ready(checkpoint: dict) -> bool:
    conditions = checkpoint.get("status", {}).get("conditions", [])
    return any(c["type"] == "Ready" and c["status"] == "True" for c in conditions)


def test_train_consume_and_protect(cluster: Cluster, store: str):
    # --- train: every step directory becomes a Checkpoint ---------------------------------
    cluster.apply(training_job("train", TRAIN_SCRIPT.format(steps=" ".join(map(str, STEPS)))))
    train = cluster.wait_phase("trainingjob", "train", {"Succeeded"}, timeout=600)
    names = train["status"].get("outputCheckpoints") or []
    assert len(names) == len(STEPS), f"expected {len(STEPS)} checkpoints (the .tmp one skipped), got {names}"

    checkpoints = {}
    for name in names:
        checkpoints[name] = cluster.wait_for(
            f"checkpoint {name} Ready", lambda n=name: (c := cluster.get("checkpoint", n)) and ready(c) and c,
            timeout=300)
    by_step = {c["status"].get("step"): c for c in checkpoints.values()}
    assert set(by_step) == set(STEPS), f"steps found: {sorted(by_step, key=str)}"
    for checkpoint in checkpoints.values():
        status = checkpoint["status"]
        assert status["phase"] == "Ready"
        assert status["digest"].startswith("sha256:")
        assert status["fileCount"] == 2
        location = status["location"]
        if store == "s3":
            assert location["s3"]["uri"].startswith(f"s3://{S3_BUCKET}/"), location
        else:
            assert location["volume"]["claimName"], location
    latest = by_step[max(STEPS)]["metadata"]["name"]

    # --- consume the latest, read-only -----------------------------------------------------
    cluster.apply(training_job("consume", CONSUME_SCRIPT.format(latest=max(STEPS)),
                               inputs=[{"fromTrainingJob": "train", "select": "latest"}], output=False))
    consume = cluster.wait_phase("trainingjob", "consume", {"Running"}, timeout=300)
    pinned = consume["status"]["inputs"]
    assert [p["name"] for p in pinned] == [latest]
    assert pinned[0]["digest"] == by_step[max(STEPS)]["status"]["digest"]
    job_name = consume["status"]["jobName"]
    pod = cluster.wait_for(f"a running pod of job {job_name}", lambda: cluster.pod_of_job(job_name), timeout=300)
    pod_name = pod["metadata"]["name"]
    cluster.wait_for("the consumer to verify its input", lambda: _input_verified(cluster, pod_name), timeout=120)
    in_use = cluster.get("checkpoint", latest)
    assert "consume" in [u["name"] for u in in_use["status"].get("usedBy", [])]

    # --- deleting the input while it is used is refused ----------------------------------
    cluster.kubectl("delete", "checkpoint", latest, "--wait=false")
    warnings = cluster.wait_for(f"a Warning event on checkpoint {latest}",
                                lambda: cluster.events(latest, "Warning"), timeout=120)
    assert any("consume" in e.get("message", "") for e in warnings), [e.get("message") for e in warnings]
    time.sleep(5)
    blocked = cluster.get("checkpoint", latest)
    assert blocked is not None, "the checkpoint was deleted while a running job used it"
    assert blocked["metadata"].get("deletionTimestamp")
    assert "ckpt.dev/in-use-protection" in blocked["metadata"].get("finalizers", [])
    # the other checkpoints are untouched
    for name in names:
        if name != latest:
            assert not cluster.get("checkpoint", name)["metadata"].get("deletionTimestamp")

    # --- the job finishes: the deletion completes by itself ------------------------------
    cluster.kubectl("exec", pod_name, "--", "touch", "/tmp/release")
    cluster.wait_phase("trainingjob", "consume", {"Succeeded"}, timeout=300)
    cluster.wait_for(f"checkpoint {latest} to be deleted", lambda: cluster.get("checkpoint", latest) is None,
                     timeout=180)
    logs = cluster.kubectl("logs", pod_name)
    assert "input is read-only" in logs and "released" in logs


def _input_verified(cluster: Cluster, pod_name: str) -> bool:
    result = cluster.kubectl("exec", pod_name, "--", "sh", "-c", "test -e /tmp/input-verified && echo yes",
                             check=False)
    return result.strip() == "yes"


def test_a_failing_job_is_reported(cluster: Cluster, store: str):
    """A job whose pod fails ends Failed, with a Warning event that says so."""
    cluster.apply(training_job("broken", "echo 'CUDA out of memory' >&2; exit 3"))
    failed = cluster.wait_phase("trainingjob", "broken", {"Failed"}, timeout=600)
    assert failed["status"]["phase"] == "Failed"
    warnings = cluster.wait_for("a Warning event on trainingjob broken",
                                lambda: cluster.events("broken", "Warning"), timeout=120)
    assert warnings


@pytest.mark.parametrize("kind", ["checkpoints", "trainingjobs"])
def test_printer_columns_and_short_names(cluster: Cluster, store: str, kind: str):
    """`kubectl get ckpt,tj` works (the NOTES.txt's next step)."""
    out = cluster.kubectl("get", "ckpt,tj")
    assert "No resources found" in out or "NAME" in out
    crd = cluster.kubectl("get", "crd", f"{kind}.ckpt.dev", "-o", "jsonpath={.spec.versions[0].additionalPrinterColumns[*].name}")
    assert "Phase" in crd
