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
select(undef, undef, undef, 0.1) until -e '/tmp/go';
if ($op eq 'flock') {
    flock($f, LOCK_EX) or die "flock: $!";
} elsif ($op eq 'fcntl') {
    # struct flock on x86_64: l_type, l_whence, (pad), l_start, l_len, l_pid, (pad)
    my $lock = pack('s s x4 q q i x4', F_WRLCK, SEEK_SET, 0, 0, 0);
    fcntl($f, F_SETLKW, $lock) or die "fcntl: $!";
} elsif ($op eq 'fsync') {
    syswrite($f, 'x' x 65536) or die "write: $!";
    $f->sync or die "fsync: $!";
} elsif ($op eq 'fstatfs') {
    my $buf = "\0" x 120;
    syscall(138, fileno($f), $buf) == 0 or die "fstatfs: $!";    # x86_64 fstatfs
} else {
    die "unknown operation $op";
}
