# Podman settings shared by e2e/image/build.sh, the image tests (tests/image, through podman.py)
# and local mode's container runtime tests. Source it from bash:
#
#     source e2e/image/podman-env.sh
#     ckpt_podman images            # = podman $CKPT_PODMAN_FLAGS images
#
# All Podman state (images, layers, containers, run state) lives under one work directory,
# $CKPT_PODMAN_DIR (default /var/tmp/ckpt-podman), never in the machine's default store:
#   CONTAINERS_CONF    this directory's containers.conf (ulimits, runc, cgroupfs: why is there)
#   CKPT_PODMAN_FLAGS  Podman's global storage flags for that directory, for other tools
#                      (shell words; podman.py builds the same list). Not CONTAINERS_STORAGE_CONF:
#                      with it every `podman run --rm` stalled 20 s here (conmon timeout).
# Outside it Podman 4.3 still keeps, whatever the flags, its blob-digest cache in
# /var/lib/containers/cache and an empty /run/containers/networks (shared with any other Podman).
# Keep in step with podman.py (tests/test_dockerfile.py checks that both agree).

_ckpt_image_dir=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
export CKPT_PODMAN_DIR="${CKPT_PODMAN_DIR:-/var/tmp/ckpt-podman}"
export CONTAINERS_CONF="$_ckpt_image_dir/containers.conf"
CKPT_PODMAN_ARGS=(--root "$CKPT_PODMAN_DIR/root" --runroot "$CKPT_PODMAN_DIR/run" --tmpdir "$CKPT_PODMAN_DIR/run/libpod")
CKPT_PODMAN_FLAGS="$(printf '%q ' "${CKPT_PODMAN_ARGS[@]}")"
export CKPT_PODMAN_FLAGS="${CKPT_PODMAN_FLAGS% }"
unset _ckpt_image_dir

# The images build.sh makes.
export CKPT_BASE_IMAGE=localhost/debian-python:3.11
export CKPT_OPERATOR_IMAGE=localhost/checkpoint-operator:dev
export CKPT_TRAIN_IMAGE=localhost/ckpt-train:dev

ckpt_podman() { podman "${CKPT_PODMAN_ARGS[@]}" "$@"; }
