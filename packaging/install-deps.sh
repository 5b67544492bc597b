#!/usr/bin/env bash
# Installs what MusicFS and its test suite need on Debian/Ubuntu.
# Run as root (or through sudo). Idempotent.
set -euo pipefail
if [ "$(id -u)" -ne 0 ]; then
  exec sudo "$0" "$@"
fi
export DEBIAN_FRONTEND=noninteractive
# fuse3: fusermount3 and /etc/fuse.conf        capnproto: schema freshness test
# ffmpeg: gen-library templates, ffprobe tests  bindfs: the benchmark's baseline
# systemd: systemd-analyze verify of the units  util-linux: setpriv in a test
# rsync, mpv, fio: real clients that read the mount in the suite
# openssh-server, sshfs: the network share the cache tests mount
# prometheus: promtool, which checks the metrics text in a test (the daemon
#   it brings is not needed; where systemd runs, it enables prometheus.service)
apt-get update -qq
apt-get install -y -qq --no-install-recommends fuse3 capnproto ffmpeg bindfs systemd util-linux rsync mpv fio openssh-server sshfs ca-certificates prometheus >/dev/null
# nftables: the remote-origin tests blackhole a server's port (a table of their own).
apt-get install -y -qq --no-install-recommends nftables >/dev/null
# rclone: a peer in the benchmark (`rclone mount --read-only`, beside bindfs),
# and the WebDAV server of the remote-origin tests (`rclone serve webdav`).
apt-get install -y -qq --no-install-recommends rclone >/dev/null
# attr: getfattr, which lists the status xattrs in a test.  mpd, mpc: a real
# media client whose database is built from the mount (the views tests).
# file: the type of the cover images.
apt-get install -y -qq --no-install-recommends attr mpd mpc file >/dev/null
# dpkg-dev: dpkg-shlibdeps, with which cargo-deb works out the package's Depends.
apt-get install -y -qq --no-install-recommends dpkg-dev >/dev/null
# python3-pip + pycapnp (PyPI): the example control-plane client that a test runs.
apt-get install -y -qq --no-install-recommends python3 python3-pip >/dev/null
if ! python3 -c "import capnp" >/dev/null 2>&1; then
  python3 -m pip install --quiet --break-system-packages pycapnp 2>/dev/null \
    || python3 -m pip install --quiet pycapnp
fi
python3 -c "import capnp" || { echo "install-deps: pycapnp did not install" >&2; exit 1; }
# moto[server] (PyPI): the S3 server of the remote-origin tests (moto_server).
if ! command -v moto_server >/dev/null 2>&1; then
  python3 -m pip install --quiet --break-system-packages 'moto[server]' 2>/dev/null \
    || python3 -m pip install --quiet 'moto[server]'
  hash -r
  # pyenv only shows new scripts after a rehash; else link the script in.
  if command -v pyenv >/dev/null 2>&1; then pyenv rehash || true; fi
  if ! command -v moto_server >/dev/null 2>&1; then
    scripts=$(python3 -c 'import sysconfig; print(sysconfig.get_path("scripts"))')
    [ -x "$scripts/moto_server" ] && ln -sf "$scripts/moto_server" /usr/local/bin/moto_server
  fi
fi
command -v moto_server >/dev/null 2>&1 || { echo "install-deps: moto_server is missing after pip install moto[server]" >&2; exit 1; }
# The toolchain components the suite uses (rustup installs; harmless if present).
if command -v rustup >/dev/null 2>&1; then
  rustup component add rustfmt clippy >/dev/null 2>&1 || true
fi
# cargo-deb, for `cargo xtask deb` (and the package test), with the cargo of
# whoever runs this script (through sudo: the invoking user's, not root's).
# Only when `cargo deb` is missing: building it takes a few minutes.
install_cargo_deb() {
  PATH="$HOME/.cargo/bin:$PATH"
  if cargo deb --version >/dev/null 2>&1; then
    return 0
  fi
  if ! command -v cargo >/dev/null 2>&1; then
    echo "install-deps: no cargo on PATH: cannot install cargo-deb (install Rust first)" >&2
    return 1
  fi
  echo "install-deps: cargo install cargo-deb --locked (a few minutes)"
  cargo install cargo-deb --locked --quiet
  cargo deb --version >/dev/null
}
if [ -n "${SUDO_USER:-}" ] && [ "$SUDO_USER" != root ]; then
  sudo -u "$SUDO_USER" -H bash -c "$(declare -f install_cargo_deb); install_cargo_deb"
else
  install_cargo_deb
fi
# The share harness runs /usr/sbin/sshd itself (no service needed) and sshfs.
[ -x /usr/sbin/sshd ] || { echo "install-deps: /usr/sbin/sshd is missing after install" >&2; exit 1; }
command -v sshfs >/dev/null 2>&1 || { echo "install-deps: sshfs is missing after install" >&2; exit 1; }
[ -e /dev/fuse ] || { echo "install-deps: /dev/fuse is missing (modprobe fuse?)" >&2; exit 1; }
echo "install-deps: ok"
