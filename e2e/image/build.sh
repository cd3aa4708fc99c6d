#!/usr/bin/env bash
# Build the project's images with Podman on a machine without a container registry:
#
#   localhost/debian-python:3.11        a Python base made from Debian's own packages (debootstrap);
#                                       made once, skipped when it exists (CKPT_REBUILD_BASE=1 redoes it)
#   localhost/checkpoint-operator:dev   this repository's Dockerfile, PYTHON_IMAGE = that base
#   localhost/ckpt-train:dev            the base + examples/local/train.py, for local mode's container tests
#
# Needs root, podman, runc and debootstrap (`apt-get install -y podman runc debootstrap`).
# All Podman state stays under $CKPT_PODMAN_DIR (default /var/tmp/ckpt-podman; see podman-env.sh);
# every build step uses the host's network or none, so no bridge network (and no nftables rule) is made.
# Usage: bash e2e/image/build.sh        (rerun: seconds, every step cached)
set -euo pipefail

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
repo=$(cd "$here/../.." && pwd)
# shellcheck source=podman-env.sh
source "$here/podman-env.sh"

say() { printf 'build.sh: %s\n' "$*"; }
die() { printf 'build.sh: error: %s\n' "$*" >&2; exit 1; }
elapsed() { echo "$((SECONDS - $1))s"; }

check_prerequisites() {
    [[ $(id -u) == 0 ]] || die "needs root (Podman runs as root on these machines); run it with sudo"
    local tool
    for tool in podman runc; do
        command -v "$tool" >/dev/null || die "$tool is not installed (apt-get install -y podman runc debootstrap)"
    done
}

# --- the host's Debian apt sources: the mirror for debootstrap and the image's own sources -----
codename() { . /etc/os-release && echo "${VERSION_CODENAME:?no VERSION_CODENAME in /etc/os-release}"; }

# Files apt reads (*.sources in deb822 form, *.list one-line form) that name this release's suites.
apt_etc=${CKPT_APT_ETC:-/etc/apt}  # another directory only in tests/test_dockerfile.py
debian_source_files() {
    local file
    for file in "$apt_etc/sources.list" "$apt_etc"/sources.list.d/*.sources "$apt_etc"/sources.list.d/*.list; do
        [[ -f $file ]] && grep -Eq "(^|[[:space:]])$1(-updates|-security)?([[:space:]]|$)" "$file" && echo "$file"
    done
    return 0
}

# The first URI of a `deb` source whose suite is exactly the release (not -updates/-security).
debian_mirror() {
    local codename=$1 file
    for file in $(debian_source_files "$codename"); do
        if [[ $file == *.sources ]]; then
            awk -v suite="$codename" '
                function flush() { if (deb && has_suite && uri != "") { print uri; found = 1; exit } deb = has_suite = 0; uri = "" }
                /^[[:space:]]*$/ { flush(); next }
                /^[[:space:]]*#/ { next }
                tolower($1) == "types:" { for (i = 2; i <= NF; i++) if ($i == "deb") deb = 1 }
                tolower($1) == "uris:" { uri = $2 }
                tolower($1) == "suites:" { for (i = 2; i <= NF; i++) if ($i == suite) has_suite = 1 }
                END { if (!found) flush() }' "$file"
        else
            sed -E 's/\[[^]]*\]//' "$file" | awk -v suite="$codename" '$1 == "deb" && $3 == suite { print $2; exit }'
        fi
    done | head -n 1
}

# --- localhost/debian-python:3.11 -------------------------------------------------------------
# debootstrap mounts /proc and /sys (and in some containers /dev nodes) into the rootfs and
# unmounts them itself; never delete through one that a killed run left behind.
remove_rootfs() {
    local dir=$1 mnt
    awk -v d="$dir/" 'index($2, d) == 1 { print $2 }' /proc/self/mounts | sort -r | while read -r mnt; do
        umount -l "$mnt" || true
    done
    rm -rf --one-file-system "$dir"
}

build_base() {
    local codename mirror rootfs start=$SECONDS log
    codename=$(codename)
    mirror=$(debian_mirror "$codename")
    [[ -n $mirror ]] || die "no 'deb' source for suite $codename in /etc/apt/sources.list{,.d/} to take a mirror from"
    command -v debootstrap >/dev/null || die "debootstrap is not installed (apt-get install -y debootstrap)"
    rootfs=$(mktemp -d "$CKPT_PODMAN_DIR/rootfs.XXXXXX")
    log="$CKPT_PODMAN_DIR/debootstrap.log"
    # shellcheck disable=SC2064  # expand now: the path is fixed
    trap "remove_rootfs '$rootfs'" EXIT
    say "base: debootstrap --variant=minbase $codename from $mirror (log: $log)"
    debootstrap --variant=minbase "$codename" "$rootfs" "$mirror" >"$log" 2>&1 \
        || { tail -n 20 "$log" >&2; die "debootstrap failed (log: $log)"; }

    # The host's sources (with -updates and -security), instead of debootstrap's one line.
    rm -f "$rootfs/etc/apt/sources.list"
    local file
    for file in $(debian_source_files "$codename"); do
        cp "$file" "$rootfs/etc/apt/${file#"$apt_etc"/}"
    done
    # Like Debian's slim images: no documentation, manuals or translations.
    cat >"$rootfs/etc/dpkg/dpkg.cfg.d/01-slim" <<'EOF'
path-exclude=/usr/share/doc/*
path-include=/usr/share/doc/*/copyright
path-exclude=/usr/share/man/*
path-exclude=/usr/share/info/*
path-exclude=/usr/share/locale/*
path-include=/usr/share/locale/locale.alias
EOF
    chroot "$rootfs" /usr/bin/env -i PATH=/usr/sbin:/usr/bin:/sbin:/bin DEBIAN_FRONTEND=noninteractive sh -euc '
        apt-get update -qq
        apt-get upgrade -y -qq
        apt-get install -y -qq --no-install-recommends python3 python3-venv ca-certificates
        apt-get clean
        rm -rf /var/lib/apt/lists/* /var/cache/apt/*.bin /var/log/apt/* /var/log/dpkg.log
        find /usr/share/doc -mindepth 1 ! -name copyright ! -type d -delete
        find /usr/share/doc -mindepth 1 -type d -empty -delete
        rm -rf /usr/share/man/* /usr/share/info/*
        find /usr/share/locale -mindepth 1 -maxdepth 1 ! -name locale.alias -exec rm -rf {} +
    ' >>"$log" 2>&1 || { tail -n 20 "$log" >&2; die "installing python3 in the base failed (log: $log)"; }
    ln -sf python3 "$rootfs/usr/bin/python"  # the Dockerfile (and python images) call `python`
    # The runtime provides these; debootstrap copied the host's.
    rm -f "$rootfs/etc/resolv.conf" "$rootfs/etc/hostname"

    tar --numeric-owner -C "$rootfs" -c . | ckpt_podman import --quiet \
        --change 'ENV LANG=C.UTF-8' --change 'CMD ["python3"]' \
        --message "debootstrap $codename + python3 python3-venv ca-certificates (e2e/image/build.sh)" \
        - "$CKPT_BASE_IMAGE" >/dev/null
    remove_rootfs "$rootfs"
    trap - EXIT
    say "base: $CKPT_BASE_IMAGE made in $(elapsed "$start") ($(ckpt_podman run --rm --network none "$CKPT_BASE_IMAGE" python3 --version))"
}

# --- podman build, replacing the previous image of that tag (its cached layers stay) --------------
build() {
    local tag=$1 start=$SECONDS old new
    shift
    old=$(ckpt_podman image inspect --format '{{.Id}}' "$tag" 2>/dev/null || true)
    # TMPDIR: Buildah's temporary copies of the context go to the work directory too.
    TMPDIR="$CKPT_PODMAN_DIR/tmp" ckpt_podman build --quiet --pull=never --tag "$tag" "$@" >/dev/null
    new=$(ckpt_podman image inspect --format '{{.Id}}' "$tag")
    if [[ -n $old && $old != "$new" ]]; then
        ckpt_podman rmi "$old" >/dev/null 2>&1 || true  # still used by a container: it stays
    fi
    say "$tag built in $(elapsed "$start") (${new:0:12})"
}

main() {
    local start=$SECONDS
    check_prerequisites
    mkdir -p "$CKPT_PODMAN_DIR/tmp"
    say "Podman state in $CKPT_PODMAN_DIR (CONTAINERS_CONF=$CONTAINERS_CONF)"
    # One build at a time per work directory (local mode's tests may start one too).
    exec 9>"$CKPT_PODMAN_DIR/build.lock"
    flock 9
    local stale
    for stale in "$CKPT_PODMAN_DIR"/rootfs.*; do
        if [[ -d $stale ]]; then
            say "removing $stale (left by an interrupted base build)"
            remove_rootfs "$stale"
        fi
    done

    if [[ ${CKPT_REBUILD_BASE:-} != 1 ]] && ckpt_podman image exists "$CKPT_BASE_IMAGE"; then
        say "base: $CKPT_BASE_IMAGE exists, not rebuilt (CKPT_REBUILD_BASE=1 rebuilds it)"
    else
        build_base
    fi

    # pip inside the build reaches the package index with the host's CA bundle, mounted for the
    # build only (it is not part of the image).
    local ca=/etc/ssl/certs/ca-certificates.crt
    local ca_mount=()
    [[ -f $ca ]] && ca_mount=(--volume "$ca:$ca:ro")
    build "$CKPT_OPERATOR_IMAGE" --network host "${ca_mount[@]}" \
        --build-arg "PYTHON_IMAGE=$CKPT_BASE_IMAGE" --file "$repo/Dockerfile" "$repo"
    build "$CKPT_TRAIN_IMAGE" --network none \
        --build-arg "PYTHON_IMAGE=$CKPT_BASE_IMAGE" --file "$here/train.Containerfile" "$repo/examples/local"

    ckpt_podman images --filter reference=localhost/* --format '{{.Repository}}:{{.Tag}}  {{.Size}}' \
        | sed 's/^/build.sh:   /'
    say "done in $(elapsed "$start")"
}

# Sourced (by tests/test_dockerfile.py): only the functions.
if [[ ${BASH_SOURCE[0]} == "$0" ]]; then
    main "$@"
fi
