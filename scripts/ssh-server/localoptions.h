/*
 * Dropbear compile-time options for deepdockd's bundled SSH server
 * (scripts/build-ssh-server.sh copies this file into the Dropbear source tree).
 *
 * In a container, deepdockd's own files are root's alone under /.deepdockd/ (the host keys,
 * the pid file), and the bundle is under /.deepdockd-ssh/, readable and runnable by every
 * user, because the user's sessions run its programs: dropbear, scp, sftp-server, ... and
 * the session environment (session-env, read by patches/session-env.patch as the user).
 * Options not set here keep Dropbear's defaults (default_options.h).
 */
#ifndef DEEPDOCKD_LOCALOPTIONS_H_
#define DEEPDOCKD_LOCALOPTIONS_H_

/* Host keys. deepdockd converts its OpenSSH-format keys with dropbearconvert and passes
 * them with -r; these are the paths Dropbear falls back to without -r. */
#define DSS_PRIV_FILENAME "/.deepdockd/dropbear_dss_host_key"
#define RSA_PRIV_FILENAME "/.deepdockd/dropbear_rsa_host_key"
#define ECDSA_PRIV_FILENAME "/.deepdockd/dropbear_ecdsa_host_key"
#define ED25519_PRIV_FILENAME "/.deepdockd/dropbear_ed25519_host_key"

/* Keep the pid file out of the image's /var/run (Dropbear writes one even with -F). */
#define DROPBEAR_PIDFILE "/.deepdockd/dropbear.pid"

/* The "sftp" subsystem: OpenSSH's sftp-server, built static alongside Dropbear. scp of
 * OpenSSH >= 9.0 uses SFTP by default. */
#define DROPBEAR_SFTPSERVER 1
#define SFTPSERVER_PATH "/.deepdockd-ssh/sftp-server"

/* The PATH a session starts with (Debian's OpenSSH defaults), with /.deepdockd-ssh last so
 * that "scp -O" (the legacy protocol, which runs "scp -t" through the user's shell) finds
 * the bundled scp in images that have none. A PATH in /.deepdockd-ssh/session-env replaces
 * these; the patch then appends /.deepdockd-ssh to it. */
#define DEFAULT_PATH "/usr/local/bin:/usr/bin:/bin:/.deepdockd-ssh"
#define DEFAULT_ROOT_PATH "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin:/.deepdockd-ssh"

/* Authentication: passwords (crypt() against /etc/shadow; musl's crypt, SHA-512 "$6$" and
 * the other classic schemes) and public keys (~/.ssh/authorized_keys). No PAM. */
#define DROPBEAR_SVR_PASSWORD_AUTH 1
#define DROPBEAR_SVR_PAM_AUTH 0
#define DROPBEAR_SVR_PUBKEY_AUTH 1

/* Forwarding: ssh -L / -R and the agent; no X11 (no xauth in the images). */
#define DROPBEAR_X11FWD 0
#define DROPBEAR_SVR_AGENTFWD 1
#define DROPBEAR_SVR_LOCALTCPFWD 1
#define DROPBEAR_SVR_REMOTETCPFWD 1

#endif /* DEEPDOCKD_LOCALOPTIONS_H_ */
