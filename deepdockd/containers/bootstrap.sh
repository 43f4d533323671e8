#!/bin/sh
# deepdockd's container entrypoint: give the container's user an SSH login, run sshd, and
# beside it the image's own command.
#
#   sh /.deepdockd-in/bootstrap.sh RUN_AS -- [COMMAND [ARG...]]
#
# RUN_AS is the image's User ("" for root), COMMAND the image's Entrypoint and Cmd (or the
# request's command): what `docker run` would have run. If it exits, the container stays up
# for SSH and its exit status is logged; if sshd exits, so does the container (and Docker
# starts it again).
#
# Before the first start deepdockd gives it /.deepdockd-in (root's alone, mode 0700: a
# read-only directory of the host, or copied in), which it copies into /.deepdockd (a tmpfs,
# root's alone: never on the container's disk, so never in a commit of it):
#   bootstrap.sh          this script
#   settings              user_name, home_uid (the home volume's uid; "" for a throwaway
#                         home), password_login (yes/no) and ssh_server (auto, bundled,
#                         image), as shell assignments
#   secret                "user:$6$...": the password's SHA-512 crypt hash, made by deepdockd
#                         ("user:*" for keys only); the password itself never enters the
#                         container. Deleted once set.
#   authorized_keys       the request's public keys, added to ~/.ssh/authorized_keys at the
#                         first start. Deleted once added.
#   env                   the create request's env, NAME=value lines, for the user's sessions
#   image-env             the image's Env, NAME=value lines, for the image's command and the
#                         user's sessions
#   ssh_host_ed25519_key  the container's own host key, the only one its sshd presents; it
#                         stays, so a restart presents the same key
#
# It trusts nothing the user controls, and does the same on the first start and on every
# restart:
# - Every program it runs as root is the system's (/usr/sbin, /usr/bin, /sbin, /bin: never
#   /usr/local, never the image's PATH), run in a clean environment from its first line:
#   neither the image's Env (PATH, LD_PRELOAD, LD_LIBRARY_PATH, ...: they may point into a
#   directory the user can write, as docker-stacks' /opt/conda) nor the request's env is in
#   Docker's Env, and it starts again under `env -i` before anything else. The image's
#   command gets the image's environment only once it runs as the image's user; the user's
#   sessions get it with the request's env on top.
# - In the user's home it follows no link and writes through none (write_authorized_keys_file).
# - It never runs the image's ssh-keygen nor presents the image's host keys, which every
#   container of the image shares.
# The SSH server is the image's OpenSSH sshd, or deepdockd's bundled static Dropbear (in
# /.deepdockd-ssh, beside this directory), by the setting ssh_server; nothing is installed.

# Its first step, before any other program runs: start again with nothing of Docker's
# environment. (Docker's is deepdockd's already, not the image's: PATH the system's and every
# other variable of the image's Env empty; see root_environment in bootstrap.py.)
if [ "${1-}" != --clean ]; then
    # What deepdockd gave (/.deepdockd-in: a read-only directory of the host, or the same
    # files copied in) goes into this script's own directory at each start. The password's
    # hash and the keys are there until they are used once: deepdockd deletes them from the
    # host's directory once SSH answers; a copy that can be written loses them here.
    given=/.deepdockd-in
    if [ -d "$given" ]; then
        if [ -L /.deepdockd ] || { [ -e /.deepdockd ] && [ ! -d /.deepdockd ]; }; then
            rm -f /.deepdockd
        fi
        if [ -d /.deepdockd ]; then chmod 0700 /.deepdockd; else mkdir -m 0700 /.deepdockd; fi &&
            cp "$given"/* /.deepdockd/ || {
            echo "deepdockd-bootstrap: FAILED: copying $given into /.deepdockd failed" >&2
            exit 1
        }
        # ([ -w ] is false on a read-only mount: no program run for nothing.)
        if [ -e "$given/secret" ] && [ -w "$given" ]; then
            rm -f "$given/secret" "$given/authorized_keys"
        fi
    fi
    for env_program in /usr/bin/env /bin/env; do
        if [ -x "$env_program" ]; then
            # Docker's own variables (HOSTNAME, NVIDIA_VISIBLE_DEVICES), for the image's command.
            (umask 077 && "$env_program" > /.deepdockd/docker-env) || exit 1
            exec "$env_program" -i PATH=/usr/sbin:/usr/bin:/sbin:/bin HOME=/root \
                /bin/sh /.deepdockd/bootstrap.sh --clean "$@"
        fi
    done
    echo "deepdockd-bootstrap: FAILED: the image has no env program (looked for /usr/bin/env, /bin/env)" >&2
    exit 1
fi
shift  # --clean
set -u

dir=/.deepdockd

say() { echo "deepdockd-bootstrap: $*" >&2; }
fail() { echo "deepdockd-bootstrap: FAILED: $*" >&2; exit 1; }

# The image's command as RUN_AS ("user", "uid", "user:group", "uid:gid"; "" is root), in the
# image's environment (command-env) and the directory Docker gave, as `docker run` runs it;
# then its exit status, for the logs. The switch to RUN_AS comes first: only the image's user
# ever runs under the image's environment (and root, when the image says root).
run_command() {
    run_as=$1
    shift
    say "starting the image's command as ${run_as:-root}: $*"
    case "$run_as" in
        "" | root | 0 | root:root | 0:0) in_image_env /root 0 "$@" ;;
        *) as_user "$run_as" "$@" ;;
    esac
    say "the image's command exited with status $?; SSH stays up"
}

as_user() {
    account=${1%%:*}
    group=
    case "$1" in *:*) group=${1#*:} ;; esac
    shift
    uid=$(id -u "$account" 2>/dev/null) || uid=$account
    [ -n "$group" ] || group=$(id -g "$account" 2>/dev/null) || group=0
    home=$(awk -F: -v name="$account" '$1 == name { print $6 }' /etc/passwd 2>/dev/null)
    for tool in /usr/bin/setpriv /bin/setpriv; do
        if [ -x "$tool" ]; then
            if id "$account" >/dev/null 2>&1; then groups=--init-groups; else groups=--clear-groups; fi
            in_image_env "${home:-/}" 5 "$tool" --reuid="$uid" --regid="$group" "$groups" -- "$@"
            return
        fi
    done
    for tool in /usr/sbin/chroot /usr/bin/chroot; do
        if [ -x "$tool" ] && "$tool" --help 2>&1 | grep -q userspec; then
            in_image_env "${home:-/}" 4 "$tool" --skip-chdir --userspec="$uid:$group" / "$@"
            return
        fi
    done
    say "cannot run the image's command as $account: the image has neither setpriv nor a chroot with --userspec"
    return 126
}

# HOME COUNT SWITCH... COMMAND...: runs the COUNT words of SWITCH (setpriv or chroot, as root
# in the clean environment; none for root) and, as whom it switched to, env -i with HOME and
# the image's environment, which runs COMMAND by the image's PATH. Each line of command-env
# is one argument of env, whatever its spaces and quotes.
in_image_env() {
    home=$1 switch=$2
    shift 2
    command_words=$(($# - switch))
    # SWITCH to the end, then env and its assignments, then COMMAND to the end after them.
    i=0
    while [ "$i" -lt "$switch" ]; do set -- "$@" "$1"; shift; i=$((i + 1)); done
    set -- "$@" "$env_program" -i "HOME=$home"
    while IFS= read -r line; do set -- "$@" "$line"; done < "$dir/command-env"
    i=0
    while [ "$i" -lt "$command_words" ]; do set -- "$@" "$1"; shift; i=$((i + 1)); done
    "$@"
}

# The image's command's environment, as `docker run` would give it: the image's Env (from
# deepdockd, which read it from the image), and Docker's own variables where Docker set them
# (HOSTNAME; NVIDIA_VISIBLE_DEVICES, which deepdockd or the GPU request chose). HOME is the
# account's, set by in_image_env unless the image sets it.
write_command_environment() {
    (
        umask 077
        awk '
            { eq = index($0, "="); name = substr($0, 1, eq - 1) }
            eq < 2 || name !~ /^[A-Za-z_][A-Za-z0-9_]*$/ { next }
            FILENAME == ARGV[1] { if (name != "HOME") docker[name] = $0; next }
            {
                if ((name in docker) && name != "PATH" && docker[name] != (name "=")) print docker[name]
                else print
                delete docker[name]
            }
            END { for (name in docker) print docker[name] }
        ' "$dir/docker-env" "$dir/image-env" > "$dir/command-env"
    )
}

umask 022
env_program=/usr/bin/env
[ -x "$env_program" ] || env_program=/bin/env
run_as=${1-}
[ $# -gt 0 ] && shift
[ "${1-}" = -- ] && shift
write_command_environment || fail "writing the image's environment for its command failed"
user_name=
home_uid=
password_login=yes
ssh_server=auto
bundle=/.deepdockd-ssh
session_env=/.deepdockd-session-env
# shellcheck source=/dev/null
. "$dir/settings" || fail "$dir/settings is missing"

find_sshd() {
    for candidate in "$(command -v sshd 2>/dev/null)" /usr/sbin/sshd /usr/bin/sshd /sbin/sshd; do
        if [ -n "$candidate" ] && [ -x "$candidate" ]; then
            echo "$candidate"
            return 0
        fi
    done
    return 1
}

# The sessions' environment reaches OpenSSH's sessions as one SetEnv line (start_openssh),
# which keeps every byte of a value (quotes, backslashes) only from OpenSSH 8.7 on: 7.8 to 8.6
# split the line without backslash escapes (a value with a " stops sshd, a \ arrives
# doubled), and before 7.8 there is no SetEnv at all (docs/compatibility.md).
OPENSSH_MIN_MAJOR=8
OPENSSH_MIN_MINOR=7

# "OpenSSH_9.2" from what the image's sshd says of itself (-V), or "OpenSSH_8.4p1" from the
# usage message of an sshd that has no -V (before 9.0), which starts with its release; empty
# if it says neither.
openssh_version() {
    "$1" -V 2>&1 | sed -n '/OpenSSH_[0-9]/{s/.*\(OpenSSH_[0-9]\)/\1/;s/[ ,].*//;p;}' | head -n 1
}

# Whether the version ("OpenSSH_8.4p1") is OPENSSH_MIN_MAJOR.OPENSSH_MIN_MINOR or newer.
openssh_is_new_enough() {
    numbers=${1#OpenSSH_}
    major=${numbers%%.*}
    minor=${numbers#*.}
    minor=${minor%%[!0-9]*}
    [ -n "$major" ] && [ -n "$minor" ] || return 1
    [ "$major" -gt "$OPENSSH_MIN_MAJOR" ] ||
        { [ "$major" -eq "$OPENSSH_MIN_MAJOR" ] && [ "$minor" -ge "$OPENSSH_MIN_MINOR" ]; }
}

# The SSH server, by ssh_server: the image's OpenSSH sshd ("image"), deepdockd's bundled
# Dropbear ("bundled"), or the image's when it has one new enough and else the bundled
# ("auto"). Nothing is ever installed into the image. The choice and its reason go to the log
# as one "SSH server:" line, which the create's answer repeats (containers/sshd_wait.py).
choose_server() {
    minimum="OpenSSH $OPENSSH_MIN_MAJOR.$OPENSSH_MIN_MINOR"
    why_old="older than $minimum, the first whose SetEnv passes every byte of the sessions' environment"
    case "$ssh_server" in
        image)
            sshd=$(find_sshd) ||
                fail "the image has no OpenSSH sshd, and ssh_server is image (deepdockd's bundled SSH server is off); use an image with openssh-server, or set ssh_server to auto"
            version=$(openssh_version "$sshd")
            openssh_is_new_enough "$version" ||
                fail "the image's sshd is ${version:-not an OpenSSH that says its version}, $why_old, and ssh_server is image (deepdockd's bundled SSH server is off); use an image with $minimum or newer, or set ssh_server to auto"
            server=openssh
            why="the image's sshd, $version"
            ;;
        bundled)
            [ -x "$bundle/dropbear" ] || fail "the bundled SSH server is missing from $bundle"
            server=dropbear
            why="ssh_server is bundled"
            ;;
        *)
            server=dropbear
            if ! sshd=$(find_sshd); then
                why="the image has no OpenSSH sshd"
            elif version=$(openssh_version "$sshd") && openssh_is_new_enough "$version"; then
                server=openssh
                why="the image's sshd, $version"
            else
                why="the image's sshd is ${version:-not an OpenSSH that says its version}, $why_old"
            fi
            [ "$server" = openssh ] || [ -x "$bundle/dropbear" ] ||
                fail "$why, and this deepdockd has no bundled SSH server (build it with make ssh-server)"
            ;;
    esac
    [ "$server" = openssh ] || why="deepdockd's bundled server: $why"
    say "SSH server: $why"
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

# With a home volume the account gets the volume's uid, in every image, so that the files in
# the home stay the user's whatever the image; a uid the image gives another account is
# refused rather than shared.
add_user() {
    if id "$user_name" >/dev/null 2>&1; then
        uid=$(id -u "$user_name")
        # An account of the image's own (a service's) must not become a login.
        [ "$uid" -ge 1000 ] || fail "user $user_name is a system account of the image (uid $uid); choose another user_name"
        [ -z "$home_uid" ] || [ "$uid" = "$home_uid" ] ||
            fail "the image has an account $user_name with uid $uid, but $user_name's home volume belongs to uid $home_uid; choose another user_name, or create with persistent_home false"
        return 0
    fi
    shell=$(login_shell)
    home=/home/$user_name
    if [ -z "$home_uid" ]; then
        if command -v useradd >/dev/null 2>&1; then
            useradd --create-home --shell "$shell" "$user_name" || fail "useradd $user_name failed"
        elif command -v adduser >/dev/null 2>&1; then
            adduser -D -s "$shell" "$user_name" || fail "adduser $user_name failed"
        else
            add_user_to_files "$(free_id /etc/passwd 1000)" "$home" "$shell"
            mkdir -p "$home" && chown "$user_name:$user_name" "$home" && chmod 0750 "$home" ||
                fail "cannot make $home for $user_name"
        fi
        return 0
    fi
    holder=$(awk -F: -v uid="$home_uid" '$3 == uid { print $1; exit }' /etc/passwd)
    [ -z "$holder" ] || fail "uid $home_uid, which $user_name's home volume belongs to, is the image's account $holder; choose another user_name, or create with persistent_home false"
    if command -v useradd >/dev/null 2>&1; then
        # --user-group: a group of the same name, its gid the uid when that is free.
        useradd --uid "$home_uid" --user-group --no-create-home --home-dir "$home" \
            --shell "$shell" "$user_name" || fail "useradd $user_name (uid $home_uid) failed"
    elif command -v adduser >/dev/null 2>&1; then
        adduser -D -H -u "$home_uid" -h "$home" -s "$shell" "$user_name" ||
            fail "adduser $user_name (uid $home_uid) failed"
    else
        add_user_to_files "$home_uid" "$home" "$shell"
    fi
}

# The lowest id from $2 up that field 3 of file $1 (/etc/passwd, /etc/group) does not use.
free_id() {
    awk -F: -v low="$2" '{ used[$3] = 1 } END { id = low; while (id in used) id++; print id }' \
        "$1" 2>/dev/null || echo "$2"
}

# An image without useradd and adduser (Debian's busybox has neither): the account is written
# into the files themselves, as those tools would. The group has the user's name, its gid the
# uid when that is free; the password is locked ("*") until set_password sets it, and the
# date of its last change is empty (0 would mean "change it at the next login" to OpenSSH).
add_user_to_files() {
    uid=$1 home=$2 shell=$3
    say "no useradd or adduser in the image: adding $user_name (uid $uid) to /etc/passwd itself"
    gid=$uid
    if awk -F: -v gid="$gid" '$3 == gid { found = 1 } END { exit !found }' /etc/group 2>/dev/null; then
        gid=$(free_id /etc/group "$uid")
    fi
    problem=$({
        echo "$user_name:x:$gid:" >> /etc/group &&
            echo "$user_name:x:$uid:$gid::$home:$shell" >> /etc/passwd &&
            echo "$user_name:*::0:99999:7:::" >> /etc/shadow &&
            chmod 0600 /etc/shadow
    } 2>&1) || fail "adding $user_name to /etc/passwd, /etc/group and /etc/shadow failed: $problem"
}

# The home volume's top directory is the user's; a new (empty) home gets the image's skeleton
# files. chown -R does not follow links (-P), and runs on files just copied only.
prepare_home() {
    [ -n "$home_uid" ] || return 0
    home=/home/$user_name
    gid=$(id -g "$user_name")
    [ -d "$home" ] && [ ! -L "$home" ] || fail "the home volume is not mounted at $home"
    chown "$home_uid:$gid" "$home" && chmod 0750 "$home" || fail "cannot give $home to $user_name"
    if [ -d /etc/skel ] && [ -z "$(ls -A "$home")" ]; then
        say "a new home: copying /etc/skel into $home"
        cp -R /etc/skel/. "$home/" && chown -R -P "$home_uid:$gid" "$home" ||
            say "copying /etc/skel into $home failed; the home stays empty"
    fi
}

# The image's chpasswd sees the hash only ("user:$6$..."), never the password. Without one
# (Debian's busybox has none) the hash goes into /etc/shadow itself.
set_password() {
    [ -f "$dir/secret" ] || return 0  # set at the first start; a restart keeps it
    if command -v chpasswd >/dev/null 2>&1; then
        chpasswd -e < "$dir/secret" || { rm -f "$dir/secret"; fail "setting the password of $user_name failed"; }
    else
        write_shadow_hash || { rm -f "$dir/secret"; fail "setting the password of $user_name in /etc/shadow failed"; }
    fi
    rm -f "$dir/secret"
}

write_shadow_hash() {
    hash=$(cut -d: -f2- "$dir/secret")
    [ -f /etc/shadow ] || { : > /etc/shadow && chmod 0600 /etc/shadow; } || return 1
    grep -q "^$user_name:" /etc/shadow || echo "$user_name:*::0:99999:7:::" >> /etc/shadow || return 1
    # A crypt hash has no backslash, so awk -v takes it as it is.
    awk -F: -v OFS=: -v name="$user_name" -v hash="$hash" '$1 == name { $2 = hash } { print }' \
        /etc/shadow > "$dir/shadow.new" && cat "$dir/shadow.new" > /etc/shadow
    status=$?
    rm -f "$dir/shadow.new"
    return $status
}

# The user's sessions see the image's environment (PATH, CUDA variables), the request's env on
# top of it, and NVIDIA_VISIBLE_DEVICES. Written as NAME=value lines to $dir/session-env.
# (In session-env the request's lines come last, as a shell that runs them wants; sshd's SetEnv
# keeps the first of two same names, so sshd-env has them first.)
# Both files by one awk (a program less per start): the lines that set a variable, but for
# those the session sets itself.
write_session_environment() {
    (
        umask 077
        : > "$dir/session-env" && : > "$dir/sshd-env" &&
            awk -v session="$dir/session-env" -v sshd="$dir/sshd-env" '
                !/^[A-Za-z_][A-Za-z0-9_]*=/ || /^(HOME|HOSTNAME|PWD|SHLVL|OLDPWD|_)=/ { next }
                FILENAME == ARGV[1] { image[++i] = $0; next }
                { request[++r] = $0 }
                END {
                    for (n = 1; n <= i; n++) print image[n] > session
                    for (n = 1; n <= r; n++) print request[n] > session
                    for (n = 1; n <= r; n++) print request[n] > sshd
                    for (n = 1; n <= i; n++) print image[n] > sshd
                }
            ' "$dir/command-env" "$dir/env"
    ) || fail "writing the sessions' environment failed"
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

# ~/.ssh/authorized_keys gets the request's keys, at the first start only. The home is the
# user's (and a home volume may be mounted in several of their containers at once): they may
# have left links in it (~/.ssh/authorized_keys -> /etc/shadow, ~/.ssh -> /etc) and may swap
# them while this runs. So: a ~/.ssh that is a link or not a directory is replaced; the work is
# done from inside ~/.ssh once the directory we are in is known to be the real $home/.ssh; the
# new file is created with noclobber (O_EXCL: it fails on anything that exists, a link
# included) and renamed into place (a rename replaces a link, not its target).
write_authorized_keys_file() {
    [ -s "$dir/authorized_keys" ] || { rm -f "$dir/authorized_keys"; return 0; }
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
        write_authorized_keys
    ) || {
        rm -f "$dir/authorized_keys"
        why="$home/.ssh/authorized_keys left out: $home, $home/.ssh or the file is not what the user's should be, or changed while it was written"
        # Without a password, the keys are the only way in: no login is a failed create.
        [ "$password_login" = yes ] || fail "$why"
        say "$why"
    }
    rm -f "$dir/authorized_keys"
}

# In the user's verified ~/.ssh: the keys the file has (unless it is a link), then the
# request's that it lacks, into a new file of the user's, mode 0600, put in place by rename.
write_authorized_keys() {
    : > "$dir/authorized_keys.old"
    if [ -f authorized_keys ] && [ ! -L authorized_keys ]; then
        cat authorized_keys > "$dir/authorized_keys.old"
    fi
    rm -f authorized_keys.deepdockd || return 1
    (
        set -C
        {
            cat "$dir/authorized_keys.old"
            # An old file without a final newline: the first new key starts a line of its own.
            [ -z "$(tail -c 1 "$dir/authorized_keys.old")" ] || echo
            if [ -s "$dir/authorized_keys.old" ]; then
                grep -vxF -f "$dir/authorized_keys.old" "$dir/authorized_keys" || true
            else
                cat "$dir/authorized_keys"
            fi
        } > authorized_keys.deepdockd
    ) || return 1
    chown -h "$user_name:$(id -g "$user_name")" authorized_keys.deepdockd &&
        chmod 0600 authorized_keys.deepdockd || return 1
    # A rename replaces a link itself, but mv moves INTO a directory (or a link to one):
    # -T refuses that where mv has it; elsewhere a link goes first and a directory is refused.
    if ! mv -fT authorized_keys.deepdockd authorized_keys 2>/dev/null; then
        [ ! -L authorized_keys ] || rm -f authorized_keys || return 1
        [ ! -d authorized_keys ] || return 1
        mv -f authorized_keys.deepdockd authorized_keys || return 1
    fi
    rm -f "$dir/authorized_keys.old"
    say "added $(wc -l < "$dir/authorized_keys") key(s) to ~$user_name/.ssh/authorized_keys"
}

choose_server
add_user
prepare_home
set_password
write_session_environment
write_profile
write_authorized_keys_file

host_key=$dir/ssh_host_ed25519_key
[ -f "$host_key" ] || fail "the container's host key $host_key is missing"

# The image's sshd configuration for our sshd: FILE's lines without HostKey and HostCertificate
# (they name the image's keys, which every container of the image shares: -h names the only
# key sshd loads), at every depth of its Include lines. An Include is read where it stands
# (in a Match block too), each pathname a glob in lexical order, a relative one under
# /etc/ssh: each is rewritten to the same pathname under sshd_mirror, where every file it
# matches is copied the same way, so sshd reads them in the same order and context. DEPTH
# stops loops where sshd does (16).
sshd_mirror=$dir/sshd-include
copy_sshd_config() {
    file=$1 depth=$2
    [ "$depth" -le 16 ] || { say "$file: Includes nest deeper than 16; left out"; return 0; }
    while IFS= read -r line || [ -n "$line" ]; do
        trimmed=${line#"${line%%[![:space:]]*}"}
        case "$trimmed" in
            [Hh][Oo][Ss][Tt][Kk][Ee][Yy][[:space:]=]* | \
                [Hh][Oo][Ss][Tt][Cc][Ee][Rr][Tt][Ii][Ff][Ii][Cc][Aa][Tt][Ee][[:space:]=]*) ;;
            [Ii][Nn][Cc][Ll][Uu][Dd][Ee][[:space:]=]*) copy_sshd_include "${trimmed#???????}" "$depth" ;;
            *) printf '%s\n' "$line" ;;
        esac
    done < "$file"
}

copy_sshd_include() {
    rest=${1#"${1%%[![:space:]]*}"}
    rest=${rest#=}
    rewritten=
    set -f
    for pattern in $rest; do
        case "$pattern" in \#*) break ;; esac  # a comment ends the line
        pattern=${pattern#\"}
        pattern=${pattern%\"}
        case "$pattern" in /*) ;; *) pattern=/etc/ssh/$pattern ;; esac
        case "$pattern" in *..*) say "Include $pattern left out: it climbs out with .."; continue ;; esac
        rewritten="$rewritten $sshd_mirror$pattern"
        set +f
        for match in $pattern; do
            [ -f "$match" ] || continue
            mkdir -p "$sshd_mirror${match%/*}" &&
                (copy_sshd_config "$match" $(($2 + 1))) > "$sshd_mirror$match" ||
                fail "copying $match for sshd failed"
        done
        set -f
    done
    set +f
    [ -z "$rewritten" ] || printf 'Include%s\n' "$rewritten"
}

# Our sshd_config: first the session environment as one SetEnv line (sshd takes the first
# SetEnv it reads; each NAME=value quoted, with \ and " escaped), so that it is this
# container's and not a file in a home that several containers may share; then the image's
# sshd_config and its Includes, without their host keys (copy_sshd_config).
start_openssh() {
    rm -rf "$sshd_mirror" && mkdir -m 0700 "$sshd_mirror" || fail "cannot make $sshd_mirror"
    {
        if [ -s "$dir/sshd-env" ]; then
            printf 'SetEnv'
            sed -e 's/[\\"]/\\&/g' -e 's/^/ "/' -e 's/$/"/' "$dir/sshd-env" | tr -d '\n'
            printf '\n'
        fi
        if [ -f /etc/ssh/sshd_config ]; then
            copy_sshd_config /etc/ssh/sshd_config 0
        fi
    } > "$dir/sshd_config"
    mkdir -p /run/sshd /var/run/sshd
    chmod 0755 /run/sshd
    say "starting $sshd for $user_name (password logins: $password_login)"
    "$sshd" -D -e -f "$dir/sshd_config" -h "$host_key" \
        -o "PasswordAuthentication=$password_login" \
        -o KbdInteractiveAuthentication=no \
        -o PermitRootLogin=no \
        -o PermitUserEnvironment=no \
        -o "AllowUsers=$user_name" &
    server_pid=$!
}

# The bundled Dropbear: the same host key (converted to its format), the same account, and
# the sessions' environment from $bundle/session-env, which our build of it reads as the user
# for each session (it has no SetEnv; like /etc/profile.d/deepdockd-env.sh, the file is
# readable in the container). The bundle is the same read-only directory in every container:
# its session-env is a link to $session_env, this container's own. Logins: the user's group only (-G), never root (-w), keys only
# without a password (-s). musl reads accounts from /etc/passwd and /etc/shadow only, and
# Dropbear refuses a login shell that /etc/shells does not list.
start_dropbear() {
    dropbear_key=$dir/dropbear_ed25519_host_key
    rm -f "$dropbear_key"
    "$bundle/dropbearconvert" openssh dropbear "$host_key" "$dropbear_key" >/dev/null 2>&1 ||
        fail "converting the host key for the bundled SSH server failed"
    shell=$(awk -F: -v name="$user_name" '$1 == name { print $7 }' /etc/passwd)
    if [ -n "$shell" ] && ! grep -qxF "$shell" /etc/shells 2>/dev/null; then
        # A file without a final newline: the shell goes on a line of its own.
        [ ! -s /etc/shells ] || [ -z "$(tail -c 1 /etc/shells)" ] || echo >> /etc/shells
        echo "$shell" >> /etc/shells
    fi
    # (A file of the image's at that path, or a link, is replaced, never written through.)
    rm -f "$session_env" &&
        (umask 022 && cat "$dir/session-env" > "$session_env") && chmod 0644 "$session_env" ||
        fail "writing the sessions' environment for the bundled SSH server failed"
    set -- -F -E -m -p 22 -r "$dropbear_key" -w -G "$(id -gn "$user_name")"
    [ "$password_login" = yes ] || set -- "$@" -s
    say "starting the bundled $("$bundle/dropbear" -V 2>&1 | head -n 1) for $user_name (password logins: $password_login)"
    "$bundle/dropbear" "$@" &
    server_pid=$!
}

# docker stop: everything in the container (the image's command, sshd, the sessions) gets the
# SIGTERM, not this shell alone; then this shell waits until they have all ended (a training
# run saving its checkpoint), or until Docker's grace runs out and it kills them.
others_alive() {
    for process in /proc/[0-9]*; do
        pid=${process#/proc/}
        { [ "$pid" = 1 ] || [ "$pid" = "$$" ]; } && continue
        state=$(sed -n 's/^State:[[:space:]]*\([A-Z]\).*/\1/p' "$process/status" 2>/dev/null)
        [ -n "$state" ] && [ "$state" != Z ] && return 0
    done
    return 1
}
stop_everything() {
    kill -TERM -1 2>/dev/null
    while others_alive; do sleep 0.1 2>/dev/null || sleep 1; done
    exit 143
}
trap stop_everything TERM INT
if [ "$server" = openssh ]; then start_openssh; else start_dropbear; fi
# The image's command starts last, once this shell has written every file it writes. A child
# that ends sends this shell SIGCHLD, and a signal that lands while the shell's own ">>"
# waits for overlayfs to copy a file of the image up (its first write to /etc/passwd,
# /etc/group, /etc/shells) fails that open with EINTR: an image whose command exits at
# once (a bare shell) made the setup fail now and then. The server's start is the last write.
if [ $# -gt 0 ]; then
    run_command "$run_as" "$@" < /dev/null &
fi
wait "$server_pid"
fail "the SSH server exited with status $?; the container stops, and Docker starts it again"
