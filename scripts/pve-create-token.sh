#!/usr/bin/env bash
# Creates what jit-bastion needs on a Proxmox VE cluster: a role with
# exactly the privileges it uses, a user, a privilege-separated API token,
# and ACLs that let them act on the guests of one existing pool.
# Run as root on any node. Usage: pve-create-token.sh POOL [USER@REALM] [TOKEN]
set -euo pipefail

pool=${1:?usage: pve-create-token.sh POOL [USER@REALM] [TOKENNAME]}
user=${2:-bastion@pve}
token=${3:-jit}
role=JitBastion

# Reading guest agent data needs VM.GuestAgent.Audit on PVE 9, VM.Monitor before.
major=$(pveversion | sed -n 's|^pve-manager/\([0-9]*\)\..*|\1|p')
agent=VM.GuestAgent.Audit
((major >= 9)) || agent=VM.Monitor
privs="VM.Audit,VM.PowerMgmt,$agent"

if pveum role list --output-format json | grep -q "\"roleid\":\"$role\""; then
    pveum role modify "$role" --privs "$privs"
else
    pveum role add "$role" --privs "$privs"
fi
if ! pveum user list --output-format json | grep -q "\"userid\":\"$user\""; then
    pveum user add "$user" --comment "jit-bastion API user"
fi
pveum user token add "$user" "$token" --privsep 1
# A privilege-separated token holds what both it and its user are granted.
pveum acl modify "/pool/$pool" --roles "$role" --users "$user"
pveum acl modify "/pool/$pool" --roles "$role" --tokens "$user!$token"

echo "Set proxmox.token_id = \"$user!$token\" and write the value shown"
echo "above to the file named by proxmox.token_secret_file (mode 0600)."
