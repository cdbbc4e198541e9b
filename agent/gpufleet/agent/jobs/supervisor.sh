#!/bin/sh
# gpufleet per-job supervisor: a POSIX sh process (a few MB), never a Python interpreter per job.
#
# usage: supervisor.sh EXIT_FILE ARGV...
#
# The agent starts this script in a new session (so it is its own process group leader and survives the
# agent), with stdout/stderr already redirected to the job's log files, the working directory and the
# environment already set. It runs ARGV as given (never through a shell: "$@"), forwards TERM/INT/HUP sent
# to it alone to the job, waits for the job, and writes the job's exit status atomically (tmp + mv) to
# EXIT_FILE, where the agent collects it even if it was restarted meanwhile. A job killed by signal N is
# recorded as 128+N, as shells report it.
set -u
exit_file=$1
shift
child=
pending=

# A stop can arrive before the job is forked (the agent sees the job as soon as this shell exists):
# remember it and deliver it as soon as the job exists, so the job is stopped, not killed at the deadline.
forward() {
    if [ -n "$child" ]; then kill -s "$1" "$child" 2>/dev/null; else pending=$1; fi
}
# Trapped signals (not ignored ones) are reset to their defaults in the job, so the job can be stopped.
trap 'forward TERM' TERM
trap 'forward INT' INT
trap 'forward HUP' HUP

# sh ignores INT and QUIT in background commands when job control is off; undo that where env can.
if env --default-signal=INT,QUIT true 2>/dev/null; then
    env --default-signal=INT,QUIT -- "$@" </dev/null &
else
    "$@" </dev/null &
fi
child=$!
if [ -n "$pending" ]; then kill -s "$pending" "$child" 2>/dev/null; fi

while :; do
    wait "$child"
    code=$?
    # <= 128: the job exited. > 128: killed by a signal, or wait was interrupted by one of our traps while
    # the job still runs (then it still exists, possibly as an unreaped zombie, and we wait again).
    if [ "$code" -le 128 ] || ! kill -0 "$child" 2>/dev/null; then
        break
    fi
done

printf '%s\n' "$code" >"$exit_file.tmp" && mv -f "$exit_file.tmp" "$exit_file"
exit "$code"
