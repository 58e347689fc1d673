# The kernel matrix check: dstrace loads and attaches on this kernel and reports
# real D waits (synchronous writes on the root disk). The host checks run.json.
set -u
R=$1
. /mnt/io/scenarios/lib.sh
kernel_facts
start_dstrace_run --duration 15s --min-duration 0 || exit 1
echo "dstrace started; writing with oflag=sync"
dd if=/dev/zero of=/var/tmp/sync.dat bs=4k count=200 oflag=sync
finish_dstrace_run
