#!/usr/bin/env bash
# Build chatbridge's image with BuildKit from the repository's root:
#   docker/build-image.sh [--base IMAGE] [--tag TAG] [--local-base]
# --local-base makes a base from Debian's packages first (docker/make-local-base.sh) and builds on it: for machines
# where no image registry answers. pip inside the build uses the machine's network (the host's) and, when the
# machine names a CA bundle for pip (PIP_CERT or pip's `cert` setting), that bundle as a build secret.
set -euo pipefail
cd "$(dirname "$0")/.."

base="" tag="chatbridge:local" local_base=""
while [ $# -gt 0 ]; do
    case "$1" in
        --base) base="$2"; shift 2 ;;
        --tag) tag="$2"; shift 2 ;;
        --local-base) local_base=1; shift ;;
        *) echo "build-image: unknown argument $1" >&2; exit 2 ;;
    esac
done
if [ -n "$local_base" ]; then
    base="${base:-chatbridge-base:bookworm}"
    docker/make-local-base.sh "$base"
fi

# A client that builds with BuildKit: one with the buildx plugin, or a Docker 20.10–22 client (Debian's docker.io)
# with DOCKER_BUILDKIT=1. A newer client without buildx only has the legacy builder, which lacks RUN --mount.
client=""
for candidate in docker /usr/bin/docker; do
    command -v "$candidate" >/dev/null || continue
    if "$candidate" buildx version >/dev/null 2>&1; then client="$candidate"; break; fi
    major="$("$candidate" version --format '{{.Client.Version}}' 2>/dev/null | cut -d. -f1)"
    if [ -n "$major" ] && [ "$major" -lt 23 ] 2>/dev/null; then client="$candidate"; break; fi
done
[ -n "$client" ] || { echo "build-image: no Docker client here builds with BuildKit (install buildx)" >&2; exit 1; }

cert="${PIP_CERT:-$(python3 -m pip config get global.cert 2>/dev/null || true)}"
args=(build --network host --file docker/Dockerfile --tag "$tag")
[ -n "$base" ] && args+=(--build-arg "BASE_IMAGE=$base")
[ -n "$cert" ] && [ -s "$cert" ] && args+=(--secret "id=pip_cert,src=$cert")
DOCKER_BUILDKIT=1 "$client" "${args[@]}" .
# The build this one replaced under the same tag is left untagged: drop such leftovers of chatbridge's builds.
"$client" image prune --force --filter label=org.opencontainers.image.title=chatbridge >/dev/null
