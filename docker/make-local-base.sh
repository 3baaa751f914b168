#!/usr/bin/env bash
# A Python base image made from Debian's own packages, for machines where no image registry answers:
#   docker/make-local-base.sh [TAG]        (default chatbridge-base:bookworm; needs root, debootstrap and docker)
# then build with  docker/build-image.sh --base TAG  (or --build-arg BASE_IMAGE=TAG).
# Debian bookworm's Python is 3.11, as in the default base python:3.11-slim-bookworm; `python` names it, and the
# image holds what that base holds for chatbridge's needs (venv, CA certificates, time zones) and no compiler.
# An image of that tag already there is kept: remove it to make it anew.
set -euo pipefail

tag="${1:-chatbridge-base:bookworm}"
mirror="${DEBIAN_MIRROR:-http://deb.debian.org/debian}"

if docker image inspect "$tag" >/dev/null 2>&1; then
    echo "make-local-base: $tag is there already"
    exit 0
fi
for tool in debootstrap docker; do
    command -v "$tool" >/dev/null || { echo "make-local-base: $tool is not installed" >&2; exit 1; }
done

root="$(mktemp -d /tmp/chatbridge-base.XXXXXX)"
trap 'rm -rf "$root"' EXIT
debootstrap --variant=minbase \
    --include=python3,python3-venv,python-is-python3,ca-certificates,tzdata,netbase \
    bookworm "$root" "$mirror" >"$root.log" 2>&1 || { tail -20 "$root.log" >&2; rm -f "$root.log"; exit 1; }
rm -f "$root.log"
# What a container never needs: package lists and caches, documentation, manuals, other locales.
rm -rf "$root"/var/lib/apt/lists/* "$root"/var/cache/apt/* "$root"/var/cache/debconf/*-old \
    "$root"/usr/share/doc/* "$root"/usr/share/man/* "$root"/usr/share/info/* "$root"/usr/share/locale/* \
    "$root"/var/log/* "$root"/tmp/*
tar --numeric-owner -C "$root" -c . \
    | docker import --change 'ENV LANG=C.UTF-8' --change 'CMD ["python3"]' - "$tag" >/dev/null
size="$(docker image inspect --format '{{.Size}}' "$tag" | numfmt --to=iec)"
echo "make-local-base: made $tag from Debian bookworm ($size)"
