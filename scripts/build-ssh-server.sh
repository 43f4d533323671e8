#!/usr/bin/env bash
# Build the SSH server that deepdockd bundles into containers, from Debian 12's own source
# packages, as static musl binaries that run in any image (glibc, musl or none at all):
#
#   deepdockd/containers/ssh-server/dropbearmulti  Dropbear 2022.83 multi-call binary: dropbear, dropbearkey,
#                                   dropbearconvert and scp, chosen by argv[0] (a symlink
#                                   named after one) or by the first argument
#                                   (dropbearmulti dropbear -V)
#   deepdockd/containers/ssh-server/sftp-server    OpenSSH 9.2p1's sftp-server (the "sftp" subsystem)
#   deepdockd/containers/ssh-server/VERSION        one line: the upstream and Debian versions built
#   deepdockd/containers/ssh-server/LICENSES/      the licences of everything linked in
#
# Dropbear gets scripts/ssh-server/localoptions.h (paths under /.deepdockd/, features) and
# scripts/ssh-server/patches/*.patch (the session environment from /.deepdockd-ssh/session-env).
# Password logins need crypt(), which Debian's musl-dev lacks (Debian bug #947193): musl's
# own src/crypt (MIT) is compiled from Debian's musl source package into a private
# libcrypt.a and linked into dropbear; libxcrypt (LGPL) is deliberately not used.
#
# Cached: nothing is done while deepdockd/containers/ssh-server/VERSION is newer than this script and the
# files in scripts/ssh-server/. The sources are fetched with apt-get source through a
# temporary deb-src list derived from the system's Debian entries; the system's apt
# configuration and lists are left as they are. Needs root only to install missing build
# dependencies. Build output goes to build/ssh-server.log.
set -euo pipefail
cd "$(dirname "$0")/.."

root=$PWD
out=deepdockd/containers/ssh-server
extra=scripts/ssh-server
log=$root/build/ssh-server.log

# The versions this script (its patch and options) is written for: Debian 12's.
dropbear_upstream=2022.83
openssh_upstream=9.2p1

# --- cache ---------------------------------------------------------------------------------
if [ -e "$out/VERSION" ] && [ "$out/VERSION" -nt scripts/build-ssh-server.sh ] \
    && [ -z "$(find "$extra" -type f -newer "$out/VERSION")" ]; then
    exit 0
fi

start=$SECONDS
mkdir -p build
: >"$log"
echo "building $out (log: build/ssh-server.log)"

# Run a command with its output in the log; on failure show the log's end.
logged() {
    if ! "$@" >>"$log" 2>&1; then
        echo "failed: $*" >&2
        tail -n 40 "$log" >&2
        exit 1
    fi
}

# --- build dependencies --------------------------------------------------------------------
# musl-tools: musl-gcc and musl-dev (headers, libc.a). dpkg-dev: dpkg-source for apt-get
# source (bzip2 and xz-utils unpack the tarballs). linux-libc-dev: kernel headers for
# Dropbear (see below). autoconf: OpenSSH's configure, regenerated after Debian's patches.
packages=(musl-tools dpkg-dev make gcc binutils patch bzip2 xz-utils linux-libc-dev autoconf)
missing=()
for package in "${packages[@]}"; do
    dpkg-query -W -f='${Status}' "$package" 2>/dev/null | grep -q "install ok installed" \
        || missing+=("$package")
done
if [ ${#missing[@]} -gt 0 ]; then
    if [ "$(id -u)" -ne 0 ]; then
        echo "missing packages: ${missing[*]} (run as root to install them)" >&2
        exit 1
    fi
    echo "installing: ${missing[*]}"
    logged apt-get update -q
    logged env DEBIAN_FRONTEND=noninteractive \
        apt-get install -y -q --no-install-recommends "${missing[@]}"
fi

# Target triplet (x86_64-linux-musl on amd64) and the multiarch include directory.
triplet=$(gcc -dumpmachine | sed 's/-gnu$/-musl/; s/-pc-/-/')
multiarch=$(gcc -print-multiarch)

tmp=$(mktemp -d "${TMPDIR:-/tmp}/ssh-server-build.XXXXXX")
trap 'rm -rf "$tmp" "$out.tmp"' EXIT

# --- sources -------------------------------------------------------------------------------
# A temporary deb-src list made of the system's Debian entries for this release (the suites
# $codename, $codename-updates and $codename-security; other repositories and backports are
# left out), in one-line and deb822 (Debian 12's debian.sources) form alike.
codename=$(. /etc/os-release && echo "${VERSION_CODENAME:-}")
if [ -z "$codename" ]; then
    echo "no VERSION_CODENAME in /etc/os-release" >&2
    exit 1
fi

# Prints "URI SUITE SIGNED-BY COMPONENTS..." for each deb entry (SIGNED-BY "-" when none).
apt_entries() {
    local lists=() deb822=() f
    [ -e /etc/apt/sources.list ] && lists+=(/etc/apt/sources.list)
    for f in /etc/apt/sources.list.d/*.list; do [ -e "$f" ] && lists+=("$f"); done
    for f in /etc/apt/sources.list.d/*.sources; do [ -e "$f" ] && deb822+=("$f"); done
    if [ ${#lists[@]} -gt 0 ]; then
        # deb [options] URI SUITE COMPONENTS...
        awk '{ sub(/#.*/, ""); sub(/^[ \t]+/, "") }
            $1 != "deb" { next }
            {
                line = $0; signed = "-"
                if (match(line, /\[[^]]*\]/)) {
                    n = split(substr(line, RSTART + 1, RLENGTH - 2), o, /[ \t]+/)
                    for (i = 1; i <= n; i++)
                        if (o[i] ~ /^signed-by=/) signed = substr(o[i], 11)
                    line = substr(line, 1, RSTART - 1) substr(line, RSTART + RLENGTH)
                }
                n = split(line, f, /[ \t]+/)
                comps = ""
                for (i = 4; i <= n; i++) comps = comps " " f[i]
                if (n >= 4) print f[2], f[3], signed comps
            }' "${lists[@]}"
    fi
    if [ ${#deb822[@]} -gt 0 ]; then
        # Stanzas of "Key: value" fields, separated by blank lines.
        awk 'function flush(   nu, ns, i, j, u, s) {
                if (types ~ /(^|[ \t])deb([ \t]|$)/ && tolower(enabled) != "no") {
                    nu = split(uris, u, /[ \t]+/); ns = split(suites, s, /[ \t]+/)
                    for (i = 1; i <= nu; i++)
                        for (j = 1; j <= ns; j++)
                            if (u[i] != "" && s[j] != "")
                                print u[i], s[j], (signed == "" ? "-" : signed), comps
                }
                types = uris = suites = comps = signed = enabled = ""
            }
            FNR == 1 { flush() }
            /^[ \t]*#/ { next }
            /^[ \t]*$/ { flush(); next }
            /^[ \t]/ { next }    # continuation (an inline key): not needed
            {
                key = tolower($0); sub(/:.*/, "", key)
                value = $0; sub(/^[^:]*:[ \t]*/, "", value); sub(/[ \t]+$/, "", value)
                if (key == "types") types = value
                else if (key == "uris") uris = value
                else if (key == "suites") suites = value
                else if (key == "components") comps = value
                else if (key == "signed-by") signed = (value ~ /^\// ? value : "")
                else if (key == "enabled") enabled = value
            }
            END { flush() }' "${deb822[@]}"
    fi
}

mkdir -p "$tmp/apt/lists/partial" "$tmp/apt/sources.list.d" "$tmp/src"
while read -r uri suite signed comps; do
    [[ $suite =~ ^${codename}(-updates|-security)?$ ]] || continue
    options=""
    [ "$signed" != "-" ] && options="[signed-by=$signed] "
    echo "deb-src ${options}$uri $suite $comps"
done < <(apt_entries) | sort -u >"$tmp/apt/sources.list"
if [ ! -s "$tmp/apt/sources.list" ]; then
    echo "no Debian $codename entries in the apt sources: using deb.debian.org"
    keyring=/usr/share/keyrings/debian-archive-keyring.gpg
    cat >"$tmp/apt/sources.list" <<EOF
deb-src [signed-by=$keyring] http://deb.debian.org/debian $codename $codename-updates main
deb-src [signed-by=$keyring] http://deb.debian.org/debian-security $codename-security main
EOF
fi
cat "$tmp/apt/sources.list" >>"$log"

# apt with only that list and its own lists directory (no package caches written). As root,
# apt would download as the sandbox user _apt, which cannot write into the private temp
# directory: download as root instead.
apt_opts=(
    -o "Dir::Etc::SourceList=$tmp/apt/sources.list"
    -o "Dir::Etc::SourceParts=$tmp/apt/sources.list.d"
    -o "Dir::State::Lists=$tmp/apt/lists"
    -o "Dir::Cache::pkgcache="
    -o "Dir::Cache::srcpkgcache="
)
[ "$(id -u)" -eq 0 ] && apt_opts+=(-o "APT::Sandbox::User=root")
echo "fetching the dropbear, openssh and musl source packages"
logged apt-get "${apt_opts[@]}" update
# apt-get source unpacks with dpkg-source, which applies Debian's patches.
(cd "$tmp/src" && logged apt-get "${apt_opts[@]}" source dropbear openssh musl)

# The Debian version of source package $1 (from its .dsc) and its unpacked directory.
debian_version() { sed -n 's/^Version: //p' "$tmp"/src/"$1"_*.dsc; }
upstream_version() { local v; v=$(debian_version "$1"); v=${v#*:}; echo "${v%-*}"; }
dropbear_deb=$(debian_version dropbear)
openssh_deb=$(debian_version openssh)
musl_deb=$(debian_version musl)
musl_upstream=$(upstream_version musl)
if [ "$(upstream_version dropbear)" != "$dropbear_upstream" ] \
    || [ "$(upstream_version openssh)" != "$openssh_upstream" ]; then
    echo "got dropbear $dropbear_deb and openssh $openssh_deb; this script, its patch and" \
        "options are written for Dropbear $dropbear_upstream and OpenSSH $openssh_upstream" >&2
    exit 1
fi
dropbear_src=$tmp/src/dropbear-$dropbear_upstream
openssh_src=$tmp/src/openssh-$openssh_upstream
musl_src=$tmp/src/musl-$musl_upstream

# --- crypt() for Dropbear --------------------------------------------------------------------
# musl's crypt as musl itself builds it: crypt.c and crypt_r.c (the dispatcher on the "$N$"
# prefix) with all its backends (SHA-512 "$6$", which deepdockd writes; SHA-256, MD5,
# bcrypt and DES for hashes already in an image), into libcrypt.a, which Dropbear's
# configure finds (-lcrypt). musl's internal headers (src/include) provide the hidden
# __crypt_* declarations; the public crypt.h comes from the same source.
echo "compiling musl $musl_upstream crypt"
mkdir -p "$tmp/crypt/lib" "$tmp/crypt/include"
for name in crypt crypt_r crypt_md5 crypt_blowfish crypt_sha256 crypt_sha512 crypt_des; do
    logged musl-gcc -std=c99 -O2 -D_XOPEN_SOURCE=700 -I "$musl_src/src/include" \
        -c "$musl_src/src/crypt/$name.c" -o "$tmp/crypt/$name.o"
done
logged ar rcs "$tmp/crypt/lib/libcrypt.a" "$tmp"/crypt/*.o
cp "$musl_src/include/crypt.h" "$tmp/crypt/include/"
# Known SHA-512 vectors through that crypt() before anything links it.
logged musl-gcc -static -O2 -I "$tmp/crypt/include" "$extra/crypt-check.c" \
    -L "$tmp/crypt/lib" -lcrypt -o "$tmp/crypt/crypt-check"
logged "$tmp/crypt/crypt-check"

# --- Dropbear ------------------------------------------------------------------------------
# musl-gcc searches only musl's headers, which have no kernel headers; Dropbear uses
# <linux/pkt_sched.h> (TC_PRIO_INTERACTIVE for interactive sessions). A private directory
# with just linux/, asm/ and asm-generic/ from linux-libc-dev, searched after musl's
# headers (-idirafter), so nothing else of glibc's /usr/include is seen.
kinc=$tmp/kernel-include
mkdir -p "$kinc"
ln -s /usr/include/linux "$kinc/linux"
ln -s /usr/include/asm-generic "$kinc/asm-generic"
ln -s "/usr/include/$multiarch/asm" "$kinc/asm"

echo "building Dropbear $dropbear_deb"
for p in "$extra"/patches/*.patch; do
    logged patch -d "$dropbear_src" -p1 --forward --no-backup-if-mismatch -i "$root/$p"
done
cp "$extra/localoptions.h" "$dropbear_src/localoptions.h"
(
    cd "$dropbear_src"
    logged ./configure --host="$triplet" CC=musl-gcc \
        CPPFLAGS="-I$tmp/crypt/include -idirafter $kinc" LDFLAGS="-L$tmp/crypt/lib" \
        --enable-static --enable-bundled-libtom --disable-zlib \
        --disable-lastlog --disable-utmp --disable-utmpx --disable-wtmp --disable-wtmpx \
        --disable-loginfunc --disable-pututline --disable-pututxline
    grep -q '^#define HAVE_CRYPT 1' config.h || { echo "configure found no crypt()" >&2; exit 1; }
    logged make -j"$(nproc)" PROGRAMS="dropbear dropbearkey dropbearconvert scp" MULTI=1 STATIC=1
    logged strip dropbearmulti
)

# --- OpenSSH sftp-server -------------------------------------------------------------------
# Only sftp-server: no OpenSSL, zlib, PAM or login records; static, no PIE (a static PIE
# would need musl's rcrt1.o start files). Debian's patches change configure.ac, and the
# shipped configure refuses to run until it is regenerated (Debian's build runs
# autoreconf). autoconf and autoheader suffice: aclocal.m4 and m4/ are unpatched, so
# aclocal (automake) would only rewrite the same aclocal.m4.
echo "building OpenSSH sftp-server $openssh_deb"
(
    cd "$openssh_src"
    logged autoconf -f
    logged autoheader -f
    logged ./configure --host="$triplet" CC=musl-gcc LDFLAGS=-static \
        --without-openssl --without-zlib --without-pam --without-pie \
        --disable-pkcs11 --disable-security-key \
        --disable-lastlog --disable-utmp --disable-utmpx --disable-wtmp --disable-wtmpx \
        --disable-pututline --disable-pututxline
    logged make -j"$(nproc)" sftp-server
    logged strip sftp-server
)

# --- checks --------------------------------------------------------------------------------
# Static (no program interpreter), and the multi binary answers to each of its names, by
# argv[0] and by its first argument.
for binary in "$dropbear_src/dropbearmulti" "$openssh_src/sftp-server"; do
    if LC_ALL=C readelf -l "$binary" | grep -q INTERP; then
        echo "$binary is not static" >&2
        exit 1
    fi
done
check=$tmp/check
mkdir -p "$check"
cp "$dropbear_src/dropbearmulti" "$check/"
for name in dropbear dropbearkey dropbearconvert scp; do
    ln -s dropbearmulti "$check/$name"
done
# expect PATTERN COMMAND...: COMMAND's output (any exit status) matches the glob PATTERN.
expect() {
    local pattern=$1 output
    shift
    output=$("$@" 2>&1) || true
    if [[ $output != $pattern ]]; then
        echo "check failed: $* printed: $output" >&2
        exit 1
    fi
}
expect "Dropbear v$dropbear_upstream*" "$check/dropbear" -V
expect "Dropbear v$dropbear_upstream*" "$check/dropbearmulti" dropbear -V
logged "$check/dropbearkey" -t ed25519 -f "$check/key"
logged "$check/dropbearconvert" dropbear openssh "$check/key" "$check/key.openssh"
logged "$check/dropbearconvert" openssh dropbear "$check/key.openssh" "$check/key.back"
cmp -s "$check/key" "$check/key.back" || \
    [ "$("$check/dropbearkey" -y -f "$check/key" | grep ^ssh-)" \
        = "$("$check/dropbearkey" -y -f "$check/key.back" | grep ^ssh-)" ]
expect "*usage: scp*" "$check/scp"
expect "*usage: sftp-server*" "$openssh_src/sftp-server" -h

# --- result --------------------------------------------------------------------------------
# Assembled next to the result, then swapped in.
rm -rf "$out.tmp" "$out.old"
mkdir -p "$out.tmp/LICENSES"
install -m 0755 "$dropbear_src/dropbearmulti" "$openssh_src/sftp-server" "$out.tmp/"
install -m 0644 "$dropbear_src/LICENSE" "$out.tmp/LICENSES/dropbear-LICENSE"
install -m 0644 "$dropbear_src/libtomcrypt/LICENSE" "$out.tmp/LICENSES/libtomcrypt-LICENSE"
install -m 0644 "$dropbear_src/libtommath/LICENSE" "$out.tmp/LICENSES/libtommath-LICENSE"
install -m 0644 "$openssh_src/LICENCE" "$out.tmp/LICENSES/openssh-LICENCE"
# musl: libc.a in both binaries, and its crypt in dropbear.
install -m 0644 "$musl_src/COPYRIGHT" "$out.tmp/LICENSES/musl-COPYRIGHT"
echo "Dropbear $dropbear_upstream (Debian $dropbear_deb)," \
    "OpenSSH sftp-server $openssh_upstream (Debian $openssh_deb)," \
    "musl $musl_upstream (Debian $musl_deb)" >"$out.tmp/VERSION"
[ -e "$out" ] && mv "$out" "$out.old"
mv "$out.tmp" "$out"
rm -rf "$out.old"
echo "built $out in $((SECONDS - start))s: $(cat "$out/VERSION")"
