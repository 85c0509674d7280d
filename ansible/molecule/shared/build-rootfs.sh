#!/usr/bin/env bash
# Build the Debian 12 root filesystem the Molecule containers boot, once, into a cache directory.
#
# Usage: build-rootfs.sh CACHE_DIR        prints the path of the ready rootfs on stdout
#
# Why a cache: debootstrap plus the role packages take ~2-3 minutes; every scenario then gets its own
# copy-on-write overlay of the same tree in seconds. The cache key is a hash of this script, so editing
# the package list rebuilds it. A lock makes concurrent scenarios wait for one build instead of racing.
#
# The packages the roles install are pre-installed here for speed (the roles still declare them, and
# apt then just confirms them). Private-network containers (firewall scenario) cannot download
# anything, so whatever they need must be in this tree or in their per-scenario extra packages.
set -euo pipefail

cache_dir=${1:?usage: build-rootfs.sh CACHE_DIR}
mkdir -p "$cache_dir"
cache_dir=$(cd "$cache_dir" && pwd)
key=$(sha256sum "$0" | cut -c1-12)
rootfs="$cache_dir/bookworm-$key"

BASE_PACKAGES=systemd-sysv,dbus,python3,ca-certificates,curl,iproute2,procps
# redis-server (redis role), postgresql and python3-psycopg2 (the scale_out scenario's state database).
ROLE_PACKAGES="python3-apt python3-venv unixodbc libsqliteodbc odbc-postgresql nginx certbot logrotate openssl acl
  redis-server postgresql python3-psycopg2"

exec 9>"$cache_dir/.build.lock"
flock 9
if [[ -f "$rootfs/.ready" ]]; then
  echo "$rootfs"
  exit 0
fi

# The mirror this machine's apt already uses (reachable here, unlike some public mirrors).
mirror=$(awk '/^URIs:/ {print $2; exit}' /etc/apt/sources.list.d/debian.sources 2>/dev/null || true)
mirror=${mirror:-http://deb.debian.org/debian}

rm -rf "$rootfs" "$rootfs.tmp"
{
  debootstrap --variant=minbase --include="$BASE_PACKAGES" bookworm "$rootfs.tmp" "$mirror"
  # Services must not start from package scripts inside a container that shares the host's network
  # (Docker images do the same); the roles start what they configure.
  printf '#!/bin/sh\nexit 101\n' > "$rootfs.tmp/usr/sbin/policy-rc.d"
  chmod 0755 "$rootfs.tmp/usr/sbin/policy-rc.d"
  # Unit installs happen from the roles, but debootstrap has no /etc/machine-id; let systemd make one.
  : > "$rootfs.tmp/etc/machine-id"
  chroot "$rootfs.tmp" apt-get update -qq
  DEBIAN_FRONTEND=noninteractive chroot "$rootfs.tmp" apt-get install -y -qq --no-install-recommends $ROLE_PACKAGES
  # nginx, Redis and PostgreSQL are enabled by their packages: keep them from binding the host's ports 80,
  # 6379 and 5432 at boot (the roles and scenarios enable what they configure).
  chroot "$rootfs.tmp" systemctl disable nginx.service redis-server.service postgresql.service
  # Nothing to log into; nspawn's console is read-only.
  chroot "$rootfs.tmp" systemctl mask getty@.service console-getty.service systemd-networkd-wait-online.service
  chroot "$rootfs.tmp" apt-get clean
  echo mssql-mcp-molecule > "$rootfs.tmp/etc/hostname"
} >"$cache_dir/build-$key.log" 2>&1 || { echo "rootfs build failed, see $cache_dir/build-$key.log" >&2; exit 1; }
touch "$rootfs.tmp/.ready"
mv "$rootfs.tmp" "$rootfs"
# Older builds are dead weight, unless a running container still has one as its overlay's lower layer.
for old in "$cache_dir"/bookworm-*; do
  [[ "$old" == "$rootfs" || ! -d "$old" ]] && continue
  grep -q "lowerdir=$old[,: ]" /proc/mounts || rm -rf "$old"
done
echo "$rootfs"
