#!/bin/sh
# Build gatewayd_<version>_<arch>.deb with dpkg-deb (zstd-compressed: Debian 12's dpkg reads it):
# a virtualenv in /opt/gatewayd holding gatewayd (with its shipped models) and its dependencies, the systemd unit and sysusers.d file, the config
# file as a conffile, /usr/bin/gatewayd, and the maintainer scripts in packaging/debian.
#
#   packaging/build-deb.sh                 for this machine's architecture (make deb)
#   ARCH=arm64 packaging/build-deb.sh      for a Raspberry Pi (64-bit OS), from any machine
#
# Environment: ARCH (Debian architecture, default: this machine's), PYTHON (the target's
# interpreter the venv points at, default /usr/bin/python3; the target's python3 must be the
# same minor version), PIP (a pip that downloads the wheels, default: "$PYTHON -m pip"),
# BUILD_DIR (default build/deb), PYVER (the target's Python minor version, default $PYTHON's).
# How the venv can live in a tree that is not yet /opt/gatewayd: docs/install.md, "The package".
set -eu

here=$(cd "$(dirname "$0")" && pwd)
top=$(cd "$here/.." && pwd)
ARCH=${ARCH:-$(dpkg --print-architecture)}
PYTHON=${PYTHON:-/usr/bin/python3}
PIP=${PIP:-"$PYTHON -m pip"}
BUILD_DIR=${BUILD_DIR:-$top/build/deb}
PYVER=${PYVER:-$($PYTHON -c 'import sys; print(f"{sys.version_info[0]}.{sys.version_info[1]}")')}

case "$ARCH" in
  amd64) wheel_arch=x86_64 ;;
  arm64) wheel_arch=aarch64 ;;
  *) echo "build-deb.sh: unsupported ARCH=$ARCH (amd64 or arm64)" >&2; exit 64 ;;
esac
# manylinux wheels for glibc 2.17 up to Debian 12's 2.36 (pip does not widen one tag to older ones).
platforms="--platform manylinux2014_$wheel_arch"
glibc=17
while [ "$glibc" -le 36 ]; do
  platforms="$platforms --platform manylinux_2_${glibc}_$wheel_arch"
  glibc=$((glibc + 1))
done

py_version=$(sed -n 's/^__version__ = "\(.*\)"/\1/p' "$top/gatewayd/__init__.py")
# PEP 440 pre-releases sort before the release in Debian only with a tilde: 0.1.0.dev0 -> 0.1.0~dev0.
version=$(printf '%s' "$py_version" | sed -E 's/\.?(dev|a|b|rc)([0-9]+)/~\1\2/g')

root=$BUILD_DIR/root
venv=$root/opt/gatewayd
site=$venv/lib/python$PYVER/site-packages
rm -rf "$BUILD_DIR"
mkdir -p "$BUILD_DIR/wheel" "$root/DEBIAN"

echo "build-deb.sh: gatewayd $version for $ARCH (python $PYVER, manylinux $wheel_arch)"
# gatewayd itself: a wheel of this checkout (models included as package data).
$PIP wheel --quiet --no-deps --wheel-dir "$BUILD_DIR/wheel" "$top"
# The venv: bin/python is a symlink to $PYTHON, pyvenv.cfg says home = its directory. Nothing
# in it depends on where the tree is except the launcher scripts, which we replace.
"$PYTHON" -m venv --without-pip "$venv"
# Dependencies as binary wheels for the target platform, straight into site-packages.
$PIP install --quiet --no-compile --only-binary=:all: --target "$site" \
  $platforms --implementation cp --python-version "$PYVER" --abi "cp$(echo "$PYVER" | tr -d .)" \
  "$BUILD_DIR"/wheel/gatewayd-*.whl
# No scripts (their shebangs name the build directory), no record of the wheel's build path.
rm -rf "$site/bin" "$venv/bin/activate"* "$venv/bin/Activate.ps1"
rm -f "$site"/gatewayd-*.dist-info/direct_url.json
sed -i '/direct_url.json/d' "$site"/gatewayd-*.dist-info/RECORD
# The command: a launcher that runs the venv's python next to it (not a pip script, whose
# shebang would name the build directory).
install -m 0755 "$here/gatewayd-launcher" "$venv/bin/gatewayd"
# pyvenv.cfg records the command that made it; say what it stands for on the target.
sed -i "s|^command = .*|command = $PYTHON -m venv /opt/gatewayd|" "$venv/pyvenv.cfg"
# Bytecode now, with the paths it will have: the service cannot write /opt (ProtectSystem=strict).
"$PYTHON" -m compileall -q -j 0 -s "$root" -p / "$venv/lib" >/dev/null

install -D -m 0644 "$top/systemd/gatewayd.service" "$root/usr/lib/systemd/system/gatewayd.service"
install -D -m 0644 "$top/systemd/gatewayd.sysusers.conf" "$root/usr/lib/sysusers.d/gatewayd.conf"
install -D -m 0644 "$top/config/gatewayd.example.toml" "$root/etc/gatewayd/gatewayd.toml"
install -D -m 0644 "$top/docs/install.md" "$root/usr/share/doc/gatewayd/install.md"
install -D -m 0644 "$top/config/gatewayd.example.toml" "$root/usr/share/doc/gatewayd/gatewayd.example.toml"
install -D -m 0644 "$top/LICENSE" "$root/usr/share/doc/gatewayd/copyright"
mkdir -p "$root/usr/bin"
ln -s /opt/gatewayd/bin/gatewayd "$root/usr/bin/gatewayd"

for script in postinst prerm postrm; do
  install -m 0755 "$here/debian/$script" "$root/DEBIAN/$script"
done
install -m 0644 "$here/debian/conffiles" "$root/DEBIAN/conffiles"
size=$(du -sk --exclude=DEBIAN "$root" | cut -f1)
sed -e "s/@VERSION@/$version/" -e "s/@ARCH@/$ARCH/" -e "s/@SIZE@/$size/" \
    -e "s/@PYVER@/$PYVER/g" -e "s/@PYNEXT@/$(echo "$PYVER" | awk -F. '{print $1 "." $2 + 1}')/" \
    "$here/debian/control.in" > "$root/DEBIAN/control"

deb=$BUILD_DIR/gatewayd_${version}_$ARCH.deb
dpkg-deb --root-owner-group -Zzstd -z9 --build "$root" "$deb" >/dev/null
echo "$deb"
