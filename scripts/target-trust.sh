#!/usr/bin/env bash
# Makes this machine's sshd trust jit-bastion certificates, through one
# drop-in (sshd_config.d/jit-bastion.conf) that sshd checks before it stays:
#   TrustedUserCAKeys   the appliance's user CA (jit-bastion ca show-user-key)
#   AuthorizedPrincipalsFile (one file per account, %u) or ...Command:
#                       which certificate principals may log in as which account
#   RevokedKeys         the appliance's KRL (jit-bastion ca krl); empty if none
#                       is given, since a missing file would refuse every key
# Run as root inside the target VM or container.
#
# Usage: target-trust.sh --ca FILE|URL [--krl FILE|URL]
#            [--allow LOGIN[=PRINCIPAL,...]]... [--principals-command CMD]
#            [--principals-user USER] [--reload]
#   --allow LOGIN             certificates naming LOGIN may log in as LOGIN
#   --allow LOGIN=P1,P2       certificates naming P1 or P2 may log in as LOGIN
#   --principals-command CMD  ask CMD (run as --principals-user, default
#                             nobody) instead of the per-account files
#   --reload                  reload sshd once the check has passed
# Paths, for tests and unusual layouts: SSHD_CONFIG_DIR (/etc/ssh),
# SSHD_CONFIG ($SSHD_CONFIG_DIR/sshd_config), SSHD_BIN (sshd).
set -euo pipefail

config_dir=${SSHD_CONFIG_DIR:-/etc/ssh}
main_config=${SSHD_CONFIG:-$config_dir/sshd_config}
sshd=${SSHD_BIN:-sshd}
home=$config_dir/jit-bastion
dropin=$config_dir/sshd_config.d/jit-bastion.conf

die() { echo "target-trust: $*" >&2; exit 1; }
usage() { sed -n '11,20s/^# \{0,1\}//p' "$0" >&2; exit 2; }

ca_source="" krl_source="" command="" command_user=nobody reload=no
allows=()
while (($#)); do
    case $1 in
        --ca) ca_source=${2:?--ca needs a file or URL}; shift 2 ;;
        --krl) krl_source=${2:?--krl needs a file or URL}; shift 2 ;;
        --allow) allows+=("${2:?--allow needs LOGIN[=PRINCIPAL,...]}"); shift 2 ;;
        --principals-command) command=${2:?--principals-command needs a command}; shift 2 ;;
        --principals-user) command_user=${2:?--principals-user needs a user}; shift 2 ;;
        --reload) reload=yes; shift ;;
        -h|--help) usage ;;
        *) echo "target-trust: unknown argument '$1'" >&2; usage ;;
    esac
done
[[ -n $ca_source ]] || usage
[[ -z $command || ${#allows[@]} -eq 0 ]] ||
    die "--allow and --principals-command exclude each other: choose one"
[[ -f $main_config ]] || die "no sshd config at $main_config (set SSHD_CONFIG)"

work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT

# fetch SOURCE DEST: copy a file, or download an http(s) URL.
fetch() {
    case $1 in
        http://*|https://*)
            if command -v curl >/dev/null; then
                curl -fsSL --proto '=http,https' -o "$2" "$1"
            else
                wget -q -O "$2" "$1"
            fi || die "cannot download $1"
            ;;
        *) cp "$1" "$2" 2>/dev/null || die "cannot read $1" ;;
    esac
}

fetch "$ca_source" "$work/user_ca.pub"
if grep -q "PRIVATE KEY" "$work/user_ca.pub"; then
    die "$ca_source holds a private key: give the CA's public line (jit-bastion ca show-user-key)"
fi
ssh-keygen -l -f "$work/user_ca.pub" >"$work/fingerprint" 2>/dev/null ||
    die "$ca_source is not an OpenSSH public key (jit-bastion ca show-user-key prints one)"
if [[ -n $krl_source ]]; then
    fetch "$krl_source" "$work/revoked.krl"
    ssh-keygen -Q -l -f "$work/revoked.krl" >/dev/null 2>&1 ||
        die "$krl_source is not an OpenSSH KRL (jit-bastion ca krl writes one)"
else
    ssh-keygen -q -k -f "$work/revoked.krl"
fi

# Each --allow becomes principals/LOGIN, one principal a line.
mkdir -p "$work/principals"
for allow in "${allows[@]}"; do
    login=${allow%%=*}
    principals=${allow#*=}
    [[ $login =~ ^[a-z_][a-z0-9_-]{0,31}$ ]] || die "'$login' is not a login name"
    [[ $principals =~ ^[A-Za-z0-9_.@-]+(,[A-Za-z0-9_.@-]+)*$ ]] ||
        die "'$principals' is not a comma-separated list of principals"
    tr ',' '\n' <<<"$principals" >"$work/principals/$login"
done

{
    echo "# Written by jit-bastion's target-trust.sh; run it again to change."
    echo "TrustedUserCAKeys $home/user_ca.pub"
    echo "RevokedKeys $home/revoked.krl"
    if [[ -n $command ]]; then
        echo "AuthorizedPrincipalsCommand $command"
        echo "AuthorizedPrincipalsCommandUser $command_user"
    else
        echo "AuthorizedPrincipalsFile $home/principals/%u"
    fi
} >"$work/jit-bastion.conf"

# Keep what was there, so a config sshd rejects is rolled back.
backup=$work/backup
mkdir -p "$backup"
for kept in "$dropin" "$home/user_ca.pub" "$home/revoked.krl"; do
    if [[ -e $kept ]]; then cp -p "$kept" "$backup/$(basename "$kept")"; fi
done
rollback() {
    for kept in "$dropin" "$home/user_ca.pub" "$home/revoked.krl"; do
        if [[ -e $backup/$(basename "$kept") ]]; then
            cp -p "$backup/$(basename "$kept")" "$kept"
        else
            rm -f "$kept"
        fi
    done
}

install -d -m 0755 "$home" "$home/principals" "$(dirname "$dropin")"
install -m 0644 "$work/user_ca.pub" "$home/user_ca.pub"
install -m 0644 "$work/revoked.krl" "$home/revoked.krl"
for file in "$work"/principals/*; do
    if [[ -e $file ]]; then install -m 0644 "$file" "$home/principals/"; fi
done
install -m 0644 "$work/jit-bastion.conf" "$dropin"

if ! "$sshd" -t -f "$main_config" 2>"$work/check"; then
    rollback
    die "sshd -t rejected the result, so it was rolled back: $(cat "$work/check")"
fi
# The drop-in only counts if the main config includes it before setting
# the same keys itself: ask sshd what it will really use.
"$sshd" -T -f "$main_config" >"$work/effective" 2>"$work/check" || true
if ! grep -qix "trustedusercakeys $home/user_ca.pub" "$work/effective"; then
    rollback
    die "sshd does not use the drop-in: put 'Include $config_dir/sshd_config.d/*.conf' at the top of $main_config and remove its own TrustedUserCAKeys"
fi

echo "sshd trusts the jit-bastion user CA $(cut -d' ' -f1-2 "$work/fingerprint")"
if [[ -n $command ]]; then
    echo "principals for each login come from: $command"
else
    allowed=$(find "$home/principals" -type f -printf '%f ' | sed 's/ $//')
    echo "logins that certificates may use: ${allowed:-none yet (add --allow LOGIN)}"
fi
if [[ $reload == yes ]]; then
    systemctl reload ssh.service 2>/dev/null || systemctl reload sshd.service
    echo "sshd reloaded"
else
    echo "reload sshd to apply: systemctl reload ssh"
fi
