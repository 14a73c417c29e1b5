#!/usr/bin/env bash
# Builds the credbroker container image as an OCI image layout without a Docker daemon (umoci),
# with the same runtime contents as deploy/Dockerfile's distroless/cc stage:
#   /usr/local/bin/credbroker            the binary (stripped)
#   the shared libraries it links        glibc, libm, libgcc_s and the loader, from this machine
#   /etc/ssl/certs/ca-certificates.crt   this machine's CA bundle (rustls-native-certs reads it)
#   /etc/passwd, /etc/group              root and nonroot (65532); the image runs as 65532:65532
#   /etc/nsswitch.conf, /tmp, /home/nonroot
# and nothing else: no shell, no package manager.
#
# Usage: deploy/image/build-oci.sh BINARY LAYOUT_DIR [TAG]
#   BINARY      e.g. target/release/credbroker (built on the same Debian release as the libraries)
#   LAYOUT_DIR  OCI image layout to create or add TAG to (default tag: the binary's version)
# Push it with `skopeo copy oci:LAYOUT_DIR:TAG docker://REGISTRY/credbroker:TAG`.
#
# Needs umoci and must run as root (the rootfs keeps root and 65532 ownership).
set -euo pipefail

binary=${1:?usage: build-oci.sh BINARY LAYOUT_DIR [TAG]}
layout=${2:?usage: build-oci.sh BINARY LAYOUT_DIR [TAG]}
command -v umoci >/dev/null || { echo "build-oci.sh: umoci is not installed (apt-get install umoci)" >&2; exit 2; }
[ "$(id -u)" = 0 ] || { echo "build-oci.sh: must run as root (file ownership in the image)" >&2; exit 2; }
[ -x "$binary" ] || { echo "build-oci.sh: $binary is not an executable" >&2; exit 2; }
version=$("$binary" --version | awk '{print $2}')
tag=${3:-$version}
uid=65532

work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
bundle=$work/bundle

[ -f "$layout/index.json" ] || umoci init --layout "$layout"
umoci new --image "$layout:$tag"
umoci unpack --image "$layout:$tag" "$bundle"
root=$bundle/rootfs

install -D -m 0755 "$binary" "$root/usr/local/bin/credbroker"
strip --strip-unneeded "$root/usr/local/bin/credbroker" 2>/dev/null || true

# The dynamic loader and every library the binary links, at the paths the binary asks for.
ldd "$binary" | awk '$2 == "=>" && $3 ~ /^\// {print $3} $1 ~ /^\// {print $1}' | sort -u | while read -r lib; do
  install -D -m 0755 "$(readlink -f "$lib")" "$root$lib"
done

install -D -m 0644 /etc/ssl/certs/ca-certificates.crt "$root/etc/ssl/certs/ca-certificates.crt"
install -d -m 0755 "$root/etc"
cat >"$root/etc/passwd" <<EOF
root:x:0:0:root:/root:/sbin/nologin
nonroot:x:$uid:$uid:nonroot:/home/nonroot:/sbin/nologin
EOF
cat >"$root/etc/group" <<EOF
root:x:0:
nonroot:x:$uid:
EOF
echo "hosts: files dns" >"$root/etc/nsswitch.conf"
chmod 0644 "$root/etc/passwd" "$root/etc/group" "$root/etc/nsswitch.conf"
install -d -m 1777 "$root/tmp"
install -d -m 0700 -o "$uid" -g "$uid" "$root/home/nonroot"

umoci repack --image "$layout:$tag" "$bundle"
umoci config --image "$layout:$tag" \
  --os linux --architecture amd64 \
  --config.user "$uid:$uid" \
  --config.workingdir / \
  --config.env PATH=/usr/local/bin \
  --config.entrypoint /usr/local/bin/credbroker \
  --config.cmd serve \
  --config.exposedports 8190/tcp \
  --config.label "org.opencontainers.image.title=credbroker" \
  --config.label "org.opencontainers.image.version=$version"
umoci gc --layout "$layout"
echo "built $layout:$tag"
