# The host's integration tests (tests/tests/engine.rs, d_states.rs, iterator.rs,
# fused.rs and after_hang.rs), run inside the guest against its kernel: real FUSE
# servers that stop answering, real D states, the real eBPF object, every assertion
# as on the host. A test whose kernel feature this kernel lacks is not run, and is
# named with the reason in $R/skipped.txt; the host check requires every other
# test to have passed.
set -u
R=$1
. /mnt/io/scenarios/lib.sh
kernel_facts
modprobe fuse || { echo "no FUSE module"; exit 1; }
mountpoint -q /sys/fs/cgroup || mount -t cgroup2 cgroup2 /sys/fs/cgroup
export DSTRACE_BIN=$DSTRACE CI=true RUST_BACKTRACE=1
# The programs the tests run (the FUSE daemon in a process of its own), from tmpfs.
mkdir -p /tmp/bin && cp /mnt/io/bin/* /tmp/bin/
export DSTRACE_TEST_FUSED=/tmp/bin/dstrace-test-fused
# Emulated (TCG) guests are several times slower: the tests' bounded waits grow.
export DSTRACE_TEST_TIMEOUT_SCALE=8

skip=()
: > "$R/skipped.txt"
skip_test() { # name reason
    skip+=(--skip "$1")
    echo "$1: $2" >> "$R/skipped.txt"
}
# Kernel lock owners come from lock:contention_begin (Linux 5.19).
if [ ! -d /sys/kernel/tracing/events/lock/contention_begin ]; then
    for t in a_kernel_lock_wait_names_the_lock_and_its_holder a_mutex_wait_names_its_owner; do
        skip_test "$t" "no lock:contention_begin tracepoint (Linux 5.19+)"
    done
fi
# Who looks up the name a dcache waiter waits for: fentry on __d_lookup_unhash_wake
# (Linux 6.0). (The FUSE request behind it needs the fuse tracepoints, Linux 6.13:
# the tests check that part only where dstrace's start record does not skip it.)
if ! grep -qw __d_lookup_unhash_wake /proc/kallsyms; then
    skip_test a_dentry_wait_leads_to_the_unanswered_lookup \
        "no __d_lookup_unhash_wake to trace (Linux 6.0+)"
fi

status=0
for test in /mnt/io/tests/*; do
    name=$(basename "$test")
    echo "running the $name tests"
    # Their scratch files go to /tmp (tmpfs); their output to /tmp first, then to
    # the share (a write to 9p is a D wait a test could see).
    # --show-output: a test that skips itself says why on its captured output.
    "$test" --test-threads=1 --show-output "${skip[@]}" > "/tmp/test-$name.log" 2>&1
    code=$?
    cp "/tmp/test-$name.log" "$R/"
    echo "the $name tests ended with status $code"
    [ "$code" -eq 0 ] || status=1
done
exit $status
