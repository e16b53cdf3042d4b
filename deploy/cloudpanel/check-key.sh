#!/usr/bin/env bash
# check-key.sh: shows, from your machine, that hosting-automator's SSH key can run nothing on a CloudPanel
# server but the gate's three command shapes (deploy/cloudpanel/README.md, "Check the key").
#
#   deploy/cloudpanel/check-key.sh -i hosting-automator [-p 22] [-o ssh_option]... root@cloudpanel.example.net
#
# Every command it sends is one the gate must refuse (exit 64 and "clpctl-gate: refused: ..."), except one
# certificate request for a domain the server cannot have (check-<random>.example): the gate lets it through and
# clpctl answers that the site does not exist, so nothing is created or issued. It sends `id` first: when that
# runs instead of being refused, the key is not forced through the gate and nothing else is sent. It also asks for a remote port
# forwarding, which the key's `restrict` must refuse. It never sends site:add:static or site:delete in a form
# the gate allows. Only the key given with -i is offered (no agent, no other identity); the host key is checked
# against your known_hosts as usual.
#
# Prints one line per check; exits 0 when every check passed, 1 when one failed, 2 on a usage error.
set -uo pipefail

usage() {
  printf 'usage: %s -i <private key> [-p <port>] [-o <ssh option>]... <user>@<host>\n' "${0##*/}" >&2
  exit 2
}

key="" port=22
ssh_options=()
while getopts ":i:p:o:" opt; do
  case $opt in
    i) key=$OPTARG ;;
    p) port=$OPTARG ;;
    o) ssh_options+=(-o "$OPTARG") ;;
    *) usage ;;
  esac
done
shift $((OPTIND - 1))
[[ $# -eq 1 && -n $key ]] || usage
target=$1
[[ -r $key ]] || { printf 'check-key: cannot read the key %s\n' "$key" >&2; exit 2; }

ssh_base=(ssh -i "$key" -p "$port" -o IdentitiesOnly=yes -o IdentityAgent=none -o BatchMode=yes
  -o LogLevel=ERROR -o ConnectTimeout=15 "${ssh_options[@]}")
failed=0 checks=0
out=$(mktemp) err=$(mktemp)
trap 'rm -f "$out" "$err"' EXIT

report() { # ok|FAIL, what, detail
  checks=$((checks + 1))
  [[ $1 == ok ]] || failed=$((failed + 1))
  printf '%-4s  %-40s  %s\n' "$1" "$2" "$3"
}

# Runs "$@" for at most $1 seconds; 124 when it had to be stopped.
within() {
  local seconds=$1 pid i
  shift
  "$@" &
  pid=$!
  for ((i = 0; i < seconds * 10; i++)); do
    kill -0 "$pid" 2>/dev/null || break
    sleep 0.1
  done
  if kill -0 "$pid" 2>/dev/null; then
    kill "$pid" 2>/dev/null
    wait "$pid" 2>/dev/null
    return 124
  fi
  wait "$pid"
}

# Sends one command line (none for a login) through the key; sets $status, fills $out and $err.
send() {
  if [[ $# -eq 0 ]]; then
    within 30 "${ssh_base[@]}" -T "$target" </dev/null >"$out" 2>"$err"
  else
    within 30 "${ssh_base[@]}" -T "$target" "$1" </dev/null >"$out" 2>"$err"
  fi
  status=$?
}

first_line() { cat "$@" | tr -d '\r' | head -n 1 | cut -c 1-100; }

refused() { # what, [command line]
  local what=$1
  shift
  send "$@"
  if [[ $status -eq 255 ]]; then
    report FAIL "$what" "ssh could not log in: $(first_line "$err")"
  elif [[ $status -eq 64 ]] && grep -q '^clpctl-gate: refused: ' "$err"; then
    report ok "$what" "refused: $(sed -n 's/^clpctl-gate: refused: //p' "$err" | first_line)"
  else
    report FAIL "$what" "NOT refused by the gate (exit $status): $(first_line "$out" "$err")"
  fi
}

# Every probe below is harmless even where it is not refused: the domain and user are ones no server has.
random=$(od -An -N4 -tx1 /dev/urandom | tr -d ' \n')
domain="check-$random.example"

# A plain shell command first. Run without the gate it only prints who the key is; then nothing else is sent.
send "id"
if [[ $status -eq 255 || $status -eq 124 ]]; then
  printf 'check-key: ssh to %s (port %s) with %s failed: %s\n' "$target" "$port" "$key" "$(first_line "$err")" >&2
  exit 1
fi
if ! [[ $status -eq 64 ]] || ! grep -q '^clpctl-gate: refused: ' "$err"; then
  report FAIL "a shell command" "ran without the gate (exit $status): $(first_line "$out" "$err")"
  printf 'check-key: the key is not forced through the gate; nothing else was sent\n' >&2
  printf '%s checks, %s failed\n' "$checks" "$failed"
  exit 1
fi
report ok "a shell command" "refused: $(sed -n 's/^clpctl-gate: refused: //p' "$err" | first_line)"

refused "no command (a login shell)"
refused "another clpctl command" "clpctl user:delete --userName=check-$random"
refused "shell syntax after an allowed command" "clpctl lets-encrypt:install:certificate --domainName='$domain';id"
refused "command substitution in a value" 'clpctl lets-encrypt:install:certificate --domainName=$(id)'
refused "an abbreviated command" "clpctl le:i:c --domainName='$domain'"
refused "site:delete without --force" "clpctl site:delete --domainName='$domain'"
refused "a flag the command does not take" \
  "clpctl lets-encrypt:install:certificate --domainName='$domain' --subjectAlternativeName='www.$domain'"
refused "a site password that breaks the rule" \
  "clpctl site:add:static --domainName='$domain' --siteUser='check-$random' --siteUserPassword='short'"

# The one allowed shape: a certificate for a domain no server has. It must pass the gate and reach clpctl.
what="allowed: certificate, unknown domain"
send "clpctl lets-encrypt:install:certificate --domainName='$domain'"
if [[ $status -eq 255 ]]; then
  report FAIL "$what" "ssh could not log in: $(first_line "$err")"
elif [[ $status -eq 64 ]] && grep -q '^clpctl-gate: refused: ' "$err"; then
  report FAIL "$what" "refused by the gate: the gate is not the one in this repository"
elif [[ $status -eq 78 ]]; then
  report FAIL "$what" "the gate cannot run clpctl (exit 78): $(first_line "$err")"
else
  report ok "$what" "reached clpctl (exit $status): $(first_line "$out" "$err")"
fi

# `restrict` also turns off port forwarding: a remote forwarding must be refused, not held open.
within 20 "${ssh_base[@]}" -N -o ExitOnForwardFailure=yes -R 0:127.0.0.1:9 "$target" </dev/null >"$out" 2>"$err"
status=$?
if [[ $status -eq 124 ]]; then
  report FAIL "no port forwarding" "a remote forwarding was accepted: the key lacks restrict"
else
  report ok "no port forwarding" "refused: $(first_line "$err")"
fi

printf '%s checks, %s failed\n' "$checks" "$failed"
[[ $failed -eq 0 ]]
