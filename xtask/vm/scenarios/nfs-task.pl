# A task of the nfs scenario that blocks on a file descriptor: it opens PATH while
# the server still answers, waits until /tmp/go exists (the server is dead by
# then), then does OP on the open file. Run as a copy of perl named after its role,
# so that its comm says what it is.
use strict;
use warnings;
use Fcntl qw(:DEFAULT :flock SEEK_SET);
use IO::Handle;

my ($op, $path) = @ARGV;
open(my $f, '+<', $path) or die "$path: $!";
# struct flock on x86_64: l_type, l_whence, (pad), l_start, l_len, l_pid, (pad)
my $write_lock = pack('s s x4 q q i x4', F_WRLCK, SEEK_SET, 0, 0, 0);
if ($op eq 'hold') {
    # Seed 000's holder: takes the POSIX lock on the lock file while the server
    # answers, says so, then (once the server is dead) writes and syncs: in D
    # itself, the lock still held.
    fcntl($f, F_SETLK, $write_lock) or die "fcntl hold: $!";
    open(my $marker, '>', '/tmp/held') or die "/tmp/held: $!";
    close($marker);
    select(undef, undef, undef, 0.1) until -e '/tmp/go';
    syswrite($f, 'x' x 4096) or die "write: $!";
    $f->sync or die "fsync: $!";
    exit 0;
}
if ($op eq 'queue') {
    # Seed 000's waiters: queue behind the holder's lock while the server still
    # answers (in S: the client polls), then in D once it is dead.
    select(undef, undef, undef, 0.1) until -e '/tmp/held';
    fcntl($f, F_SETLKW, $write_lock) or die "fcntl queue: $!";
    exit 0;
}
select(undef, undef, undef, 0.1) until -e '/tmp/go';
if ($op eq 'flock') {
    flock($f, LOCK_EX) or die "flock: $!";
} elsif ($op eq 'fcntl') {
    fcntl($f, F_SETLKW, $write_lock) or die "fcntl: $!";
} elsif ($op eq 'fsync') {
    syswrite($f, 'x' x 65536) or die "write: $!";
    $f->sync or die "fsync: $!";
} elsif ($op eq 'fstatfs') {
    my $buf = "\0" x 120;
    syscall(138, fileno($f), $buf) == 0 or die "fstatfs: $!";    # x86_64 fstatfs
} else {
    die "unknown operation $op";
}
