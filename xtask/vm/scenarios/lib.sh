# Helpers the scenarios source. $R is the results directory (on the io share).
DSTRACE=/mnt/io/dstrace

# What this kernel offers dstrace, for the report: BTF objects and tracepoint groups.
kernel_facts() {
    ls /sys/kernel/btf > "$R/btf.txt"
    local group
    for group in sched lock filelock fuse nfs nfs4 sunrpc lockd nfsd; do
        if [ -d "/sys/kernel/tracing/events/$group" ]; then
            echo "$group $(ls "/sys/kernel/tracing/events/$group" | grep -vc -e '^enable$' -e '^filter$')"
        else
            echo "$group absent"
        fi
    done > "$R/tracepoints.txt"
}

# Starts `dstrace run --json ARGS...` in the background and waits (up to 120 s:
# loading is slow under TCG) until its `start` record is out. Its output goes to
# /tmp, not to the 9p share: each write there is a short D wait, which a
# `--min-duration 0` run would report, in a loop (finish_dstrace_run copies it).
start_dstrace_run() {
    "$DSTRACE" run --json "$@" > /tmp/run.json 2> /tmp/run.stderr &
    DSTRACE_PID=$!
    local i
    for i in $(seq 600); do
        grep -q '"type":"start"' /tmp/run.json 2>/dev/null && return 0
        kill -0 "$DSTRACE_PID" 2>/dev/null || { echo "dstrace run ended before starting"; return 1; }
        sleep 0.2
    done
    echo "dstrace run did not start within 120 s"
    return 1
}

# Waits for the `dstrace run` of start_dstrace_run, copies its output to $R/run.json
# and $R/run.stderr, and returns its exit status.
finish_dstrace_run() {
    wait "$DSTRACE_PID"
    local status=$?
    cp /tmp/run.json /tmp/run.stderr "$R/"
    echo "dstrace run ended with status $status"
    return "$status"
}
