#!/usr/bin/env bash
# Build build/deb/ensign_<version>_<arch>.deb with dpkg-deb (no debhelper). Run as root (or with
# unprivileged user namespaces); needs only Debian packages and PyPI.
#
# How the venv ends up working at /opt/ensign: venvs are not relocatable (pyvenv.cfg, the
# shebangs of bin/*, RECORD files and the paths compiled into .pyc files all name the prefix).
# So instead of building elsewhere and patching, the venv is built *at* /opt/ensign, inside a
# private mount namespace (`unshare --mount`): there /opt is a tmpfs holding symlinks to the
# host's /opt entries (pip may be configured with local indexes under /opt) plus an /opt/ensign
# onto which the staging tree's opt/ensign is bind-mounted. Every path pip writes is then the
# final one while the files land in the staging tree, and the host's /opt (and an installed
# ensign there) is never touched. The interpreter is Debian's /usr/bin/python3.X, so the
# package depends on that exact python3.X.
set -euo pipefail
cd "$(dirname "$0")/.."
REPO=$PWD

OUT_DIR=$REPO/build/deb
PY=${ENSIGN_DEB_PYTHON:-/usr/bin/python3}
# xz makes the smallest package but takes ~40s on 80 MB; the tests ask for gzip (~7s).
COMPRESS=${ENSIGN_DEB_COMPRESS:-xz}

# -- build dependencies (all from Debian) ------------------------------------------------------
BUILD_DEPS=(python3 python3-venv python3-dev gcc libc6-dev binutils pkg-config libtss2-dev dpkg-dev)
missing=()
for pkg in "${BUILD_DEPS[@]}"; do
    dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q "install ok installed" || missing+=("$pkg")
done
if ((${#missing[@]})); then
    if [[ $(id -u) -eq 0 ]]; then
        echo "build_deb: apt-get install ${missing[*]}" >&2
        apt-get update -qq >/dev/null
        DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
    else
        echo "build_deb: missing Debian packages (run as root to install): ${missing[*]}" >&2
        exit 1
    fi
fi

PYVER=$("$PY" -c 'import sys; print(f"{sys.version_info[0]}.{sys.version_info[1]}")')
PYBIN=/usr/bin/python$PYVER      # the venv links to this exact interpreter
[[ -x $PYBIN ]] || { echo "build_deb: $PYBIN not found" >&2; exit 1; }
"$PYBIN" -c 'import sys; sys.exit(sys.version_info < (3, 11))' \
    || { echo "build_deb: need Python >= 3.11" >&2; exit 1; }

VERSION=$("$PYBIN" -c 'import tomllib; print(tomllib.load(open("pyproject.toml", "rb"))["project"]["version"])')
ARCH=$(dpkg --print-architecture)
DEB=$OUT_DIR/ensign_${VERSION}_${ARCH}.deb
STAGE=$OUT_DIR/root
SRC=$OUT_DIR/src

rm -rf "$STAGE" "$SRC" "$OUT_DIR/shlibs"
rmdir "$OUT_DIR/hostopt" 2>/dev/null || true
mkdir -p "$STAGE/opt/ensign" "$SRC" "$OUT_DIR/hostopt"

# -- the project source, copied so that pip's in-tree build leaves the checkout alone ----------
cp -a pyproject.toml README.md daemon attestors proto sdk "$SRC/"
find "$SRC" -name __pycache__ -prune -exec rm -rf {} +

# -- the venv, built at its final path (see the comment at the top) ----------------------------
# shellcheck disable=SC2016  # expanded by the inner shell
MAKE_VENV='
    export PIP_DISABLE_PIP_VERSION_CHECK=1 PIP_NO_INPUT=1 PIP_ROOT_USER_ACTION=ignore
    "$PYBIN" -m venv /opt/ensign
    /opt/ensign/bin/python -m pip install -q --upgrade pip
    /opt/ensign/bin/python -m pip install -q "$SRC"
    /opt/ensign/bin/python -m pip uninstall -q -y pip setuptools
    /opt/ensign/bin/ensign --help > "$HELPFILE"
'
# shellcheck disable=SC2016
IN_NAMESPACE='
    mount --rbind /opt "$HOSTOPT"
    mount -t tmpfs -o mode=0755 ensign-build /opt
    for e in "$HOSTOPT"/* "$HOSTOPT"/.[!.]*; do
        if [[ -e $e && ${e##*/} != ensign ]]; then ln -s "$e" "/opt/${e##*/}"; fi
    done
    mkdir /opt/ensign
    mount --bind "$STAGE/opt/ensign" /opt/ensign
'
export PYBIN STAGE SRC HOSTOPT=$OUT_DIR/hostopt HELPFILE=$OUT_DIR/help.txt
if [[ $(id -u) -eq 0 ]]; then UNSHARE=(unshare --mount --propagation private)
else UNSHARE=(unshare --mount --map-root-user --propagation private); fi
if "${UNSHARE[@]}" true 2>/dev/null; then
    "${UNSHARE[@]}" bash -euo pipefail -c "$IN_NAMESPACE$MAKE_VENV"
elif [[ $(id -u) -eq 0 && ! -e /opt/ensign ]]; then
    # No mount namespaces here (e.g. a container without CAP_SYS_ADMIN): build at the real
    # /opt/ensign, which is free, and move the result into the staging tree.
    echo "build_deb: unshare not permitted; building in /opt/ensign and moving it" >&2
    trap 'rm -rf /opt/ensign' EXIT
    rmdir "$STAGE/opt/ensign"
    bash -euo pipefail -c "$MAKE_VENV"
    mv /opt/ensign "$STAGE/opt/ensign"
    trap - EXIT
else
    echo "build_deb: need a mount namespace (unshare --mount), or root and a free /opt/ensign" >&2
    exit 1
fi
V=$STAGE/opt/ensign
# Not needed to run the daemon: PowerShell activation, VCS leftovers in wheels.
rm -f "$V/bin/Activate.ps1"
find "$V" \( -name .gitignore -o -name .gitattributes \) -type f -delete
# Byte code is not shipped: postinst compiles it and prerm deletes it, as Debian does for
# Python packages (the unit's ProtectSystem=strict keeps the daemon from writing it itself).
find "$V" -name __pycache__ -type d -prune -exec rm -rf {} +
# Debug symbols of the compiled extensions (about a third of the package).
find "$V" -type f \( -name '*.so' -o -name '*.so.*' \) \
    -exec strip --strip-unneeded --remove-section=.comment --remove-section=.note {} +

# -- system files ------------------------------------------------------------------------------
install -d -m 0755 "$STAGE/usr/bin" "$STAGE/lib/systemd/system" "$STAGE/usr/lib/tmpfiles.d" \
    "$STAGE/etc/ensign/sigstore/bundles" "$STAGE/usr/share/doc/ensign" "$STAGE/DEBIAN"
ln -s /opt/ensign/bin/ensign "$STAGE/usr/bin/ensign"
install -m 0644 systemd/ensign.service "$STAGE/lib/systemd/system/ensign.service"
install -m 0644 "systemd/ensign-helper@.service" "$STAGE/lib/systemd/system/ensign-helper@.service"
install -m 0644 systemd/ensign.tmpfiles "$STAGE/usr/lib/tmpfiles.d/ensign.conf"
install -m 0644 packaging/ensign.toml "$STAGE/etc/ensign/ensign.toml"
ROOT_JSON=$(find "$V/lib" -path '*/sigstore/_store/https%3A%2F%2Ftuf-repo-cdn.sigstore.dev/trusted_root.json' | head -n1)
[[ -n $ROOT_JSON ]] || { echo "build_deb: sigstore production trusted_root.json not found" >&2; exit 1; }
install -m 0644 "$ROOT_JSON" "$STAGE/etc/ensign/sigstore/trusted_root.json"

# Debian wants a copyright file and a changelog for every package; both are generated here.
COMMIT=$(git rev-parse --short HEAD 2>/dev/null || echo unknown)
DATE=$(git log -1 --format=%aD 2>/dev/null || date -R)
YEAR=$(git log -1 --format=%ad --date=format:%Y 2>/dev/null || date +%Y)
cat > "$STAGE/usr/share/doc/ensign/copyright" <<EOF
Format: https://www.debian.org/doc/packaging-manuals/copyright-format/1.0/
Upstream-Name: ensign
Comment: /opt/ensign holds Python packages from PyPI, each under its own licence
 (see /opt/ensign/lib/python$PYVER/site-packages/*.dist-info).

Files: *
Copyright: $YEAR Ensign developers
License: Apache-2.0
 On Debian systems, the full text of the Apache License, Version 2.0 can be
 found in the file /usr/share/common-licenses/Apache-2.0.
EOF
printf 'ensign (%s) unstable; urgency=medium\n\n  * Built from commit %s.\n\n -- Ensign developers <ensign@example.org>  %s\n' \
    "$VERSION" "$COMMIT" "$DATE" | gzip -9n > "$STAGE/usr/share/doc/ensign/changelog.gz"
chmod 0644 "$STAGE/usr/share/doc/ensign/"*

# A short manual page: the synopsis and the command list from --help.
install -d -m 0755 "$STAGE/usr/share/man/man1"
HELP=$(cat "$OUT_DIR/help.txt")
{
    printf '.TH ENSIGN 1 "%s" "ensign %s" "User Commands"\n' "$(date -d "$DATE" +%Y-%m-%d 2>/dev/null || date +%F)" "$VERSION"
    printf '.SH NAME\nensign \\- identity daemon for AI agents (SPIFFE Workload API)\n'
    printf '.SH SYNOPSIS\n.B ensign\n.I command\n.RI [ options ]\n'
    printf '.SH DESCRIPTION\n.nf\n'
    printf '%s\n' "$HELP" | sed -e 's/\\/\\e/g' -e 's/^[.'"'"']/\\\&&/'
    printf '.fi\n.SH FILES\n.TP\n.I /etc/ensign/ensign.toml\nconfiguration\n'
    printf '.TP\n.I /var/lib/ensign\nCA state, registry and audit trail\n'
    printf '.SH SEE ALSO\n.BR systemctl (1),\n.I /usr/share/doc/ensign\n'
} | gzip -9n > "$STAGE/usr/share/man/man1/ensign.1.gz"
chmod 0644 "$STAGE/usr/share/man/man1/ensign.1.gz"

# -- DEBIAN/ -----------------------------------------------------------------------------------
for f in postinst prerm postrm; do install -m 0755 "packaging/debian/$f" "$STAGE/DEBIAN/$f"; done
install -m 0644 packaging/debian/conffiles "$STAGE/DEBIAN/conffiles"

# Shared libraries the compiled extensions link against (tpm2-pytss: libtss2-*; wheels bundle
# their own under *.libs, which dpkg-shlibdeps follows through their RPATH).
mkdir -p "$OUT_DIR/shlibs/debian"
printf 'Source: ensign\n\nPackage: ensign\nArchitecture: any\n' > "$OUT_DIR/shlibs/debian/control"
mapfile -t ELFS < <(find "$V" -type f \( -name '*.so' -o -name '*.so.*' \) | sort)
SHLIBS=$(cd "$OUT_DIR/shlibs" && dpkg-shlibdeps -O --ignore-missing-info \
            -l"$V/lib/python$PYVER/site-packages" "${ELFS[@]}" 2>/dev/null \
         | sed -n 's/^shlibs:Depends=//p')
[[ -n $SHLIBS ]] || { echo "build_deb: dpkg-shlibdeps found nothing" >&2; exit 1; }

# Files are owned by root (dpkg-deb --root-owner-group); make the modes explicit: only the
# entry points in bin/ are executable (wheels ship stray +x modules and extension modules).
find "$STAGE" -path "$STAGE/DEBIAN" -prune -o -type d -exec chmod 0755 {} +
find "$V" -type f -exec chmod 0644 {} +
find "$V/bin" -type f -exec grep -lq '^#!' {} \; -exec chmod 0755 {} +

SIZE=$(du -sk --exclude=DEBIAN "$STAGE" | cut -f1)
sed -e "s/@VERSION@/$VERSION/" -e "s/@ARCH@/$ARCH/" -e "s/@INSTALLED_SIZE@/$SIZE/" \
    -e "s/@PYTHON@/python$PYVER/" -e "s/@SHLIBS@/$SHLIBS/" \
    packaging/debian/control.in > "$STAGE/DEBIAN/control"
(cd "$STAGE" && find . -path ./DEBIAN -prune -o -type f -printf '%P\0' | sort -z \
    | xargs -0 md5sum) > "$STAGE/DEBIAN/md5sums"
chmod 0644 "$STAGE/DEBIAN/control" "$STAGE/DEBIAN/md5sums"

rm -f "$DEB"
dpkg-deb --root-owner-group -Z"$COMPRESS" --build "$STAGE" "$DEB" >/dev/null
rm -rf "$SRC" "$OUT_DIR/shlibs" "$OUT_DIR/help.txt"
rmdir "$OUT_DIR/hostopt"
echo "$DEB"
