#!/bin/sh
# deepdockd's container entrypoint: give the container's user an SSH login, then run sshd.
#
#   sh /.deepdockd/bootstrap.sh USER_NAME
#
# deepdockd copies this script and /.deepdockd/secret ("user:password", mode 0600) into the
# container before it starts. The password is read from that file and the file deleted: it
# never travels in the environment, the command line or a log. The image's own sshd is used
# when it has one; otherwise openssh-server is installed with the image's package manager.
# On a restart (the user, keys and sshd are already there) it only starts sshd again.
set -u

user_name=$1
dir=/.deepdockd

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

# The user's sessions see the container's environment: the image's (PATH, CUDA variables), the
# request's, and NVIDIA_VISIBLE_DEVICES. ~/.ssh/environment serves commands run over ssh;
# /etc/profile.d serves login shells, whose /etc/profile resets PATH.
write_environment() {
    home=$(getent passwd "$user_name" 2>/dev/null | cut -d: -f6)
    [ -n "$home" ] || home=/home/$user_name
    mkdir -p "$home/.ssh"
    env | grep -Ev '^(HOME|HOSTNAME|PWD|SHLVL|OLDPWD|_|user_name|dir|home)=' > "$home/.ssh/environment"
    chown -R "$user_name" "$home/.ssh"
    chmod 700 "$home/.ssh"
    chmod 600 "$home/.ssh/environment"
    if [ -d /etc/profile.d ]; then
        export -p | grep -Ev ' (HOME|HOSTNAME|PWD|SHLVL|OLDPWD|_)=' > /etc/profile.d/deepdockd-env.sh
    fi
}

sshd=$(find_sshd) || { install_sshd || fail "installing openssh-server failed (see above)"; sshd=$(find_sshd) || fail "openssh-server was installed but no sshd was found"; }
add_user
if [ -f "$dir/secret" ]; then
    chpasswd < "$dir/secret" || { rm -f "$dir/secret"; fail "setting the password of $user_name failed"; }
    rm -f "$dir/secret"
fi
write_environment
ssh-keygen -A >/dev/null 2>&1 || fail "ssh-keygen -A could not write the host keys"
mkdir -p /run/sshd /var/run/sshd
chmod 0755 /run/sshd
say "starting $sshd for $user_name"
exec "$sshd" -D -e \
    -o PasswordAuthentication=yes \
    -o PermitRootLogin=no \
    -o PermitUserEnvironment=yes \
    -o "AllowUsers=$user_name"
