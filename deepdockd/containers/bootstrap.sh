#!/bin/sh
# deepdockd's container entrypoint: give the container's user an SSH login, then run sshd.
#
#   sh /.deepdockd/bootstrap.sh USER_NAME
#
# Before the first start deepdockd puts into /.deepdockd (root's alone, mode 0700):
#   bootstrap.sh          this script
#   secret                "user:$6$...": the password's SHA-512 crypt hash, made by deepdockd;
#                         the password itself never enters the container. Deleted once set.
#   env                   the create request's env, NAME=value lines, for the user's sessions
#   ssh_host_ed25519_key  the container's own host key, the only one its sshd presents; it
#                         stays, so a restart presents the same key
#
# It trusts nothing the user controls, and does the same on the first start and on every
# restart:
# - Its steps run as root in a clean environment with a fixed PATH: it starts again under
#   `env -i` first, so nothing of Docker's Env (PATH, LD_PRELOAD, ...) reaches them. The
#   request's env is never in Docker's Env at all; it reaches the user's sessions only.
# - In the user's home it follows no link and writes through none (write_ssh_environment).
# - It never runs the image's ssh-keygen nor presents the image's host keys, which every
#   container of the image shares.
# The image's own sshd is used when it has one; otherwise openssh-server is installed with the
# image's package manager.
set -u

dir=/.deepdockd

# First pass, in the environment Docker gave (the image's, and NVIDIA_VISIBLE_DEVICES): keep
# it as the base of the user's sessions' environment, then start again without it. Absolute
# paths only: PATH is still the image's here.
if [ "${1-}" != --clean ]; then
    umask 077
    for env_program in /usr/bin/env /bin/env; do
        if [ -x "$env_program" ]; then
            "$env_program" > "$dir/image-env" || exit 1
            exec "$env_program" -i \
                PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin HOME=/root \
                /bin/sh "$dir/bootstrap.sh" --clean "$@"
        fi
    done
    echo "deepdockd-bootstrap: FAILED: the image has no env program (looked for /usr/bin/env, /bin/env)" >&2
    exit 1
fi
shift
user_name=$1
umask 022

say() { echo "deepdockd-bootstrap: $*" >&2; }
fail() { echo "deepdockd-bootstrap: FAILED: $*" >&2; exit 1; }

find_sshd() {
    for candidate in "$(command -v sshd 2>/dev/null)" /usr/sbin/sshd /usr/bin/sshd /sbin/sshd; do
        if [ -n "$candidate" ] && [ -x "$candidate" ]; then
            echo "$candidate"
            return 0
        fi
    done
    return 1
}

install_sshd() {
    if command -v apt-get >/dev/null 2>&1; then
        say "no sshd in the image: installing openssh-server with apt-get"
        export DEBIAN_FRONTEND=noninteractive
        apt-get update -q >&2 && apt-get install -y -q --no-install-recommends openssh-server >&2
    elif command -v dnf >/dev/null 2>&1; then
        say "no sshd in the image: installing openssh-server with dnf"
        dnf install -y openssh-server >&2
    elif command -v yum >/dev/null 2>&1; then
        say "no sshd in the image: installing openssh-server with yum"
        yum install -y openssh-server >&2
    elif command -v apk >/dev/null 2>&1; then
        say "no sshd in the image: installing openssh-server with apk"
        apk add --no-cache openssh-server >&2
    else
        fail "the image has no sshd and no package manager to install one (looked for sshd, apt-get, dnf, yum, apk)"
    fi
}

login_shell() {
    for shell in /bin/bash /bin/sh; do
        if [ -x "$shell" ]; then
            echo "$shell"
            return 0
        fi
    done
    echo /bin/sh
}

add_user() {
    if id "$user_name" >/dev/null 2>&1; then
        uid=$(id -u "$user_name")
        # An account of the image's own (a service's) must not become a login.
        [ "$uid" -ge 1000 ] || fail "user $user_name is a system account of the image (uid $uid); choose another user_name"
        return 0
    fi
    shell=$(login_shell)
    if command -v useradd >/dev/null 2>&1; then
        useradd --create-home --shell "$shell" "$user_name" || fail "useradd $user_name failed"
    elif command -v adduser >/dev/null 2>&1; then
        adduser -D -s "$shell" "$user_name" || fail "adduser $user_name failed"
    else
        fail "the image has neither useradd nor adduser to create user $user_name"
    fi
}

# The image's chpasswd sees the hash only ("user:$6$..."), never the password.
set_password() {
    [ -f "$dir/secret" ] || return 0  # set at the first start; a restart keeps it
    chpasswd -e < "$dir/secret" || { rm -f "$dir/secret"; fail "setting the password of $user_name failed"; }
    rm -f "$dir/secret"
}

# The user's sessions see the image's environment (PATH, CUDA variables), the request's env on
# top of it, and NVIDIA_VISIBLE_DEVICES. Written as NAME=value lines to $dir/session-env.
write_session_environment() {
    (
        umask 077
        cat "$dir/image-env" "$dir/env" 2>/dev/null |
            grep -E '^[A-Za-z_][A-Za-z0-9_]*=' |
            grep -Ev '^(HOME|HOSTNAME|PWD|SHLVL|OLDPWD|_)=' > "$dir/session-env"
    )
}

# Login shells (their /etc/profile resets PATH, then reads /etc/profile.d), for the user only:
# a root login shell (docker exec, sudo -i) never takes the request's PATH or LD_PRELOAD.
write_profile() {
    [ -d /etc/profile.d ] || return 0
    uid=$(id -u "$user_name")
    {
        echo "# deepdockd: the environment of $user_name's sessions (the image's and the request's)"
        echo "if [ \"\$(id -u)\" = $uid ]; then"
        sed -e "s/'/'\\\\''/g" -e "s/=/='/" -e "s/^/    export /" -e "s/\$/'/" "$dir/session-env"
        echo "fi"
    } > /etc/profile.d/deepdockd-env.sh
}

# ~/.ssh/environment serves commands run over ssh (sshd reads it as the user). The home is the
# user's: they may have left links in it (~/.ssh/environment -> /etc/shadow, ~/.ssh -> /etc)
# and may swap them while this runs. So: a ~/.ssh that is a link or not a directory is
# replaced; the work is done from inside ~/.ssh once the directory we are in is known to be
# the real $home/.ssh; the old file is removed (rm removes a link, not its target) and the new
# one created with noclobber (O_EXCL: it fails on anything that exists, a link included). The
# file stays root's, mode 0644, so no chown can be turned onto another file; the user may
# still replace it, as the directory is theirs.
write_ssh_environment() {
    home=$(getent passwd "$user_name" 2>/dev/null | cut -d: -f6)
    [ -n "$home" ] || home=/home/$user_name
    (
        cd -P "$home" || exit 1
        home=$(pwd -P)
        if [ -L .ssh ] || { [ -e .ssh ] && [ ! -d .ssh ]; }; then
            say "replacing $home/.ssh, which was not a directory"
            rm -f .ssh || exit 1
        fi
        if [ ! -d .ssh ]; then
            mkdir -m 700 .ssh && chown -h "$user_name:$(id -g "$user_name")" .ssh || exit 1
        fi
        cd -P .ssh && [ "$(pwd -P)" = "$home/.ssh" ] || exit 1
        rm -f environment || exit 1
        set -C
        cat "$dir/session-env" > environment
    ) || say "$home/.ssh/environment left out: $home or $home/.ssh is not a directory of the user's, or changed while it was written"
}

sshd=$(find_sshd) || { install_sshd || fail "installing openssh-server failed (see above)"; sshd=$(find_sshd) || fail "openssh-server was installed but no sshd was found"; }
add_user
set_password
write_session_environment
write_profile
write_ssh_environment

host_key=$dir/ssh_host_ed25519_key
[ -f "$host_key" ] || fail "the container's host key $host_key is missing"
# The image's sshd_config without its HostKey lines (they name the image's keys): -h names the
# only key sshd loads.
if [ -f /etc/ssh/sshd_config ]; then
    grep -Eiv '^[[:space:]]*HostKey([[:space:]]|=)' /etc/ssh/sshd_config > "$dir/sshd_config"
else
    : > "$dir/sshd_config"
fi
mkdir -p /run/sshd /var/run/sshd
chmod 0755 /run/sshd
say "starting $sshd for $user_name"
exec "$sshd" -D -e -f "$dir/sshd_config" -h "$host_key" \
    -o PasswordAuthentication=yes \
    -o PermitRootLogin=no \
    -o PermitUserEnvironment=yes \
    -o "AllowUsers=$user_name"
