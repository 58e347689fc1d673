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

# Starts `dstrace run ARGS...` in the background with JSON lines in $R/$1.json and
# waits (up to 120 s: loading is slow under TCG) until its `start` record is out.
start_dstrace_run() {
    local name=$1
    shift
    "$DSTRACE" run --json "$@" > "$R/$name.json" 2> "$R/$name.stderr" &
    DSTRACE_PID=$!
    local i
    for i in $(seq 600); do
        grep -q '"type":"start"' "$R/$name.json" 2>/dev/null && return 0
        kill -0 "$DSTRACE_PID" 2>/dev/null || { echo "dstrace run ended before starting"; return 1; }
        sleep 0.2
    done
    echo "dstrace run did not start within 120 s"
    return 1
}
