#!/bin/sh
# Example action of playbooks.example.yaml: rotate and drop old logs on HOST (--keep-days N).
# It only says what it would do, so that the example is safe to run in any mode. Replace
# its body with your own command (e.g. systemctl, kubectl, your deploy tool); ftml runs it
# without a shell, with the event's fields as single arguments, and judges success by the
# exit code and the playbook's verify conditions.
# usage: rotate_logs.sh --host HOST [--keep-days N]
set -eu
[ "$#" -ge 1 ] || { echo "usage: rotate_logs.sh --host HOST [--keep-days N]" >&2; exit 64; }
echo "ftml example: would rotate_logs: $*"
