#!/bin/sh
# Example action of playbooks.example.yaml: repair HOST for CAUSE.
# It only says what it would do, so that the example is safe to run in any mode. Replace
# its body with your own command (e.g. systemctl, kubectl, your deploy tool); ftml runs it
# without a shell, with the event's fields as single arguments, and judges success by the
# exit code and the playbook's verify conditions.
# usage: repair.sh HOST CAUSE
set -eu
[ "$#" -ge 1 ] || { echo "usage: repair.sh HOST CAUSE" >&2; exit 64; }
echo "ftml example: would repair: $*"
