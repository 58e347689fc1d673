# Seed 001 for real: an NFS server (in this guest, over 127.0.0.1) stops answering
# under mounted v3 and v4 clients, tasks hang on both mounts, and dstrace reports
# them. `dstrace run` is started before the server dies (so it sees the waits begin
# and reports them as still going on at the end); `dstrace snapshot` is taken while
# everything is stuck. The host checks snapshot.json and run.json.
set -u
R=$1
. /mnt/io/scenarios/lib.sh
LOCKD_PORT=32768
MOUNTD_PORT=20048

# The server. lockd's port is pinned so that it can be dropped too: stopping nfsd
# alone leaves lockd answering.
modprobe lockd
sysctl -q -w fs.nfs.nlm_tcpport=$LOCKD_PORT fs.nfs.nlm_udpport=$LOCKD_PORT
modprobe nfsd
mkdir -p /export/dir /mnt/v3 /mnt/v4
echo data > /export/file
echo "/export 127.0.0.1(rw,sync,no_subtree_check,no_root_squash,insecure,fsid=1)" > /etc/exports
mkdir -p /run/rpcbind /var/lib/nfs/rpc_pipefs
rpcbind || exit 1
rpc.statd --no-notify || exit 1
mount -t nfsd nfsd /proc/fs/nfsd
mount -t rpc_pipefs rpc_pipefs /var/lib/nfs/rpc_pipefs 2>/dev/null
exportfs -ra || exit 1
rpc.mountd --port $MOUNTD_PORT || exit 1
rpc.nfsd 4 || exit 1

# The clients. timeo=30,retrans=1: "not responding" within seconds, not minutes.
mount -t nfs -o vers=3,proto=tcp,timeo=30,retrans=1 127.0.0.1:/export /mnt/v3 || exit 1
mount -t nfs -o vers=4.2,timeo=30,retrans=1 127.0.0.1:/export /mnt/v4 || exit 1
grep nfs /proc/self/mountinfo > "$R/mounts.txt"
touch /mnt/v3/lock3 /mnt/v4/lock4 /mnt/v3/data3 /mnt/v4/data4 /mnt/v4/registry-lock
stat -c %i /mnt/v4/registry-lock > "$R/registry-lock.inode"
ls -l /mnt/v3 /mnt/v4
# Tasks that will block on a file they opened while the server answered (the
# snapshot can name the mount of those: from /proc it knows a file descriptor's
# mount, not where a path points); comm = role.
mkdir -p /tmp/bin
fd_task() {
    cp /usr/bin/perl "/tmp/bin/$1"
    "/tmp/bin/$1" /mnt/io/scenarios/nfs-task.pl "$2" "$3" &
}
fd_task flock-v3 flock /mnt/v3/lock3
fd_task fcntl-v4 fcntl /mnt/v4/lock4
fd_task fsync-v4 fsync /mnt/v4/data4
fd_task fstatfs-v3 fstatfs /mnt/v3/data3
# Seed 000: a holder takes the POSIX lock of a lock file on the v4 mount; two
# waiters queue behind it (see nfs-task.pl).
fd_task holder hold /mnt/v4/registry-lock
echo $! > "$R/holder.pid"
for i in $(seq 600); do [ -e /tmp/held ] && break; sleep 0.1; done
[ -e /tmp/held ] || { echo "the holder did not take its lock"; exit 1; }
# Only now: the client modules (nfs, nfsv3, nfsv4, sunrpc, lockd) are loaded.
kernel_facts
for group in nfs nfs4 sunrpc; do
    ls "/sys/kernel/tracing/events/$group" > "$R/events-$group.txt" 2>/dev/null
done
for event in sunrpc/rpc_task_begin sunrpc/rpc_request sunrpc/xprt_transmit sunrpc/rpc_timeout_status \
    sunrpc/rpc_task_end sunrpc/xprt_retransmit nfs4/nfs4_set_lock; do
    echo "== $event"
    cat "/sys/kernel/tracing/events/$event/format" 2>/dev/null || echo absent
done > "$R/event-formats.txt"

start_dstrace_run --duration 45s || exit 1

# The waiters queue while the server still answers (and wait in S, polling).
fd_task queue-1 queue /mnt/v4/registry-lock
fd_task queue-2 queue /mnt/v4/registry-lock
sleep 1

# The server dies: every packet to rpcbind, nfsd, mountd and lockd is dropped.
nft -f - <<NFT || exit 1
table inet dstrace_vm {
    chain input {
        type filter hook input priority 0; policy accept;
        tcp dport { 111, 2049, $MOUNTD_PORT, $LOCKD_PORT } drop
        udp dport { 111, 2049, $MOUNTD_PORT, $LOCKD_PORT } drop
    }
}
NFT
echo "server dropped at $(date +%T)"

# Tasks that hang: those above start on their open files, and these on paths.
touch /tmp/go
df /mnt/v3 > /dev/null 2>&1 &
stat /mnt/v3/missing-v3 > /dev/null 2>&1 &
stat /mnt/v4/missing-v4 > /dev/null 2>&1 &

# Let the RPCs time out a few times ("not responding"), then look.
sleep 20
echo "snapshot at $(date +%T)"
"$DSTRACE" snapshot --json > "$R/snapshot.json" 2> "$R/snapshot.stderr"
echo "dstrace snapshot: status $?"
"$DSTRACE" snapshot > "$R/snapshot.txt" 2>&1
# Arrive after the hang: a second `dstrace run`, started now that everything is
# stuck, must explain the tasks already in D as the first one does (from kernel
# memory: the task iterator).
"$DSTRACE" run --json --duration 6s > /tmp/run-after.json 2> /tmp/run-after.stderr
echo "dstrace run (after the hang): status $?"
cp /tmp/run-after.json /tmp/run-after.stderr "$R/"
ps -eo pid,stat,wchan:32,comm > "$R/ps.txt"
for pid in $(ps -eo pid=,stat= | awk '$2 ~ /^D/ { print $1 }'); do
    echo "== $pid $(cat "/proc/$pid/comm")"
    cat "/proc/$pid/stack"
done > "$R/stacks.txt" 2>&1
cat /proc/locks > "$R/locks.txt"

finish_dstrace_run
status=$?
dmesg | grep -i -e nfs -e lockd -e rpc | tail -20
exit "$status"
