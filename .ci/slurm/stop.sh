#!/usr/bin/env bash
# Stop the Slurm daemons that .ci/slurm/start.sh started (as recorded in its state file), by the
# PIDs in their pidfiles; daemons it found already running are left alone.
#   --purge   also delete Slurm's saved state (job records, job id counter, node state)
set -uo pipefail
STATE_DIR=/run/affect-ci-slurm
log() { echo "[ci-slurm stop] $*"; }
[ "$(id -u)" -eq 0 ] || { echo "[ci-slurm stop] ERROR: must run as root" >&2; exit 1; }
started() { [ -f "$STATE_DIR/started" ] && grep -qx "$1" "$STATE_DIR/started"; }
alive() {  # alive PIDFILE COMM
  local p s
  [ -s "$1" ] || return 1
  p=$(cat "$1"); s=$(ps -o stat=,comm= -p "$p" 2>/dev/null) || return 1
  [[ $s != Z* && $s == *"$2"* ]]
}
stop_one() {  # stop_one NAME PIDFILE
  if ! started "$1"; then log "$1: not started by start.sh, left alone"; return 0; fi
  if alive "$2" "$1"; then
    local p; p=$(cat "$2"); log "stopping $1 (pid $p)"; kill "$p"
    for _ in $(seq 50); do alive "$2" "$1" || break; sleep 0.2; done
    if alive "$2" "$1"; then log "$1 still alive after 10s: SIGKILL"; kill -9 "$p"; fi
    rm -f "$2"
  else
    log "$1 not running"
  fi
  sed -i "/^$1\$/d" "$STATE_DIR/started"
}
# cancel what is still queued or running so that slurmstepd processes end cleanly
if started slurmctld && scontrol ping 2>/dev/null | grep -q UP; then
  n=$(squeue -h 2>/dev/null | wc -l)
  if [ "$n" -gt 0 ]; then
    log "cancelling $n job(s)"; scancel --user="$(id -un)" 2>/dev/null || true
    for _ in $(seq 50); do [ -z "$(squeue -h -t R,CG,PD 2>/dev/null)" ] && break; sleep 0.2; done
  fi
fi
stop_one slurmd /run/slurm/slurmd.pid
stop_one slurmctld /run/slurm/slurmctld.pid
stop_one munged /run/munge/munged.pid
if [ "${1:-}" = "--purge" ]; then
  log "purging saved slurm state"; rm -rf /var/lib/slurm/slurmctld/* /var/lib/slurm/slurmd/*
fi
exit 0
