// Command ferrybench measures ferry on loopback against a raw TCP copy and
// rsync, as issue 4 asks: throughput through commit and fsync, CPU and
// peak RSS of each side, time to the first chunk on the wire, and eight
// concurrent senders against one daemon. `make bench` builds bin/ and runs
// it; it prints a table and writes the same figures to bench/results.json.
//
// It is a program, not a Go benchmark, so that `go test ./...` never times
// anything and so that every tool runs as real processes whose resource use
// the kernel reports per side.
//
// # What is measured
//
// Every run starts a fresh receiver (a receiving child, ferryd, or an rsync
// daemon, each with an empty directory on the same disk as the source
// files), then calls sync(2) and pauses (-pause, 3s by default) so that
// writeback of the previous run has finished and every run starts from the
// same state: on these virtual machines writing a fresh GiB costs more than
// sending it, because freed guest memory goes back to the host. Nothing is
// dropped from the page cache; the sources stay cached for every tool
// alike. Then the clock starts and the sender is started.
//
// The pause also measures, from /proc/stat, how busy the CPUs are without
// the benchmark. On a 2-core machine a build or a fuzzer running alongside
// halves what the tools get, so while the CPUs are more than 10% busy the
// benchmark keeps pausing, for at most -quiet-wait (2m), then runs anyway
// with a warning. The busiest such pause per row is in the table (bg cpu %)
// and the JSON (background_cpu): a row with a high figure is not to be
// trusted.
//
// Sizes run in rounds, and within a round the tools run in turn
// (raw, ferry, ferry-unix, rsync, scp, raw, ..., once per memory
// state), so that drift of the machine
// hits all tools alike. Figures are medians over the rounds; peak RSS is the
// maximum.
//
//   - raw: the reference limit. `ferrybench raw-send` reads the file with
//     1 MiB reads and writes each to a TCP connection; `ferrybench raw-recv`
//     reads the connection into a 1 MiB buffer, writes it to a file and
//     fsyncs it. Plain read/write on purpose: sendfile or splice would skip
//     user space, which ferry cannot do because it hashes every byte. Wall
//     time runs from the sender's start until both processes have exited,
//     that is until the receiver's fsync returned.
//   - ferry: `ferry send --json --retries 0` to a ferryd started for this
//     run only. Wall time runs from the sender's start to its exit, which
//     follows the daemon's commit: whole-file hash check, fsync, link into
//     place, directory fsync. The daemon's BLAKE3 must equal the source's.
//     Over loopback TCP, so inside TLS 1.3 with the daemon's key pinned.
//   - ferry-unix: the same over a Unix socket, which ferryd serves in
//     plaintext: what ferry's own work costs without TLS, against the same
//     raw TCP copy (a Unix socket also skips the TCP stack, which raw pays).
//   - rsync: `rsync --fsync --whole-file FILE rsync://127.0.0.1:PORT/bench/`
//     to an `rsync --daemon --no-detach` started for this run on a free port
//     (rsync cannot listen on port 0). --fsync makes the receiver fsync the
//     file before its rename; an rsync without --fsync gets `sync FILE`
//     after the client exits, inside the clock, and the results say which
//     (settings.rsync_durability). Wall time runs to the client's exit,
//     which waits for the daemon's receiver.
//   - scp: `scp -c aes128-gcm@openssh.com FILE 127.0.0.1:DIR/` to a
//     private `sshd -D` started for this run on a free loopback port, with a
//     host key and a client key made for the benchmark (nothing of the
//     user's ssh setup is read or changed), then `sync FILE` inside the
//     clock: scp never fsyncs. Receiver CPU is sshd's, which includes the
//     session it forked and reaped, plus sync's. Skipped, with the reason
//     printed, when scp, ssh, ssh-keygen or sshd is not installed
//     (apt-get install openssh-client openssh-server); as root the
//     benchmark creates /run/sshd, which sshd requires.
//
// The concurrent run starts -concurrent senders of one -concurrent-size file
// at once against one ferryd, each under its own --dest, in -rounds rounds
// and every -memory state, like the sizes; each run follows its own
// reference run in the same state. Its reference is
// one raw copy of the same bytes (raw-send -repeat N: the file N times down
// one connection into one file), not of one file: a 256 MiB copy is mostly
// absorbed by the host's write cache and measures twice the speed a 2 GiB
// one does, which says nothing about the daemon.
//
// # Memory states
//
// On these virtual machines the cost of a buffered write depends on where
// the page cache gets its pages. Memory the guest freed is reported back
// to the host a few seconds later; writing into such pages faults each one
// in again, which shows as about 2 CPU-seconds per GiB of copying in the
// kernel (copy_folio_from_iter_atomic) and makes a raw copy with fsync take
// 1.3-3 s. Right after a large file was deleted (or caches were dropped),
// the freed pages are still the guest's and the same copy costs about
// 0.2 s: a raw copy takes 0.4-0.6 s. ferry's O_DIRECT writes are not
// affected either way. So the sizes run in two states, each tool in each
// state within every round (-memory):
//
//   - settled: after sync(2) and the pause, as above;
//   - fresh: after the pause, a ballast file of twice the run's bytes is
//     written through the page cache and deleted (still dirty, so it is
//     never written back), and the clock starts at once.
//
// Rows carry their state ("memory" in the JSON) and ratios are taken
// against raw in the same state: both the ratio of medians (x raw, with
// raw's median beside it) and the median over rounds of the ratio within
// each round (x raw/round), which drift of a shared machine moves less.
//
// CPU is user+sys seconds and peak RSS is ru_maxrss, both from the
// rusage wait4(2) returns for each child. Every child runs under
// `ferrybench rusage-exec`, a small wrapper that waits for it and reports
// its rusage: wait4 on a direct child of the benchmark would report at
// least the benchmark's own peak RSS, because Linux carries the peak of the
// memory a process was cloned with over its exec, and Go clones sharing the
// parent's memory. The wrapper's own peak (about 6 MiB) is still counted;
// the results give it as settings.rss_floor_bytes, and a figure at the
// floor means "at most this". Daemons are stopped with SIGTERM (the
// wrapper passes it on) after each run to collect theirs; wait4 includes
// the children a process has reaped, which matters for rsync (its daemon
// forks per connection and the receiver forks again). With several senders
// their CPU is summed and their peak RSS is the largest.
//
// # First chunk on the wire
//
// The time from the start of `ferry send` to its first chunk on the wire is
// measured by a TCP relay inside this process, between sender and daemon.
// The relay parses the frames the sender writes (1 type byte, 4 bytes
// big-endian payload length: transfer.FrameHeaderSize) and timestamps the
// header of the first chunk frame (transfer.FrameChunk), after the hello
// and the offer; from then on it only copies. Because the relay is a third
// process's worth of copying on a 2-core machine, it is used only in one
// extra ferry run per size (run first, which also warms the binaries), not
// in the timed rounds. The 16 GiB sparse file, whose run exists for first
// chunk and memory, always goes through it. For raw, the receiver reports
// when its first read returned; rsync's first byte is not measured.
//
// # Trees (issue 9)
//
// `-trees LIST` (or `make bench-trees`, which runs only these, once in
// each file system state described under "Fsync strategies", into
// bench/results-trees-clean.json and bench/results-trees-churned.json)
// adds directory trees, run after the sizes:
//
//   - small: -tree-files (20,000) files of 4 KiB in -tree-dirs (100)
//     directories;
//   - gosrc: a copy of `$(go env GOROOT)/src` (about 11,500 files, 120 MiB),
//     regular files only, as ferry skips symlinks;
//   - resend: the small tree sent again onto the complete copy the small
//     run just made (a new daemon on the same root): ferry's second send,
//     rsync's no-op re-run;
//   - rtt: -rtt-files (500) files of 4 KiB through a relay in the benchmark
//     that holds every byte -rtt-delay (25 ms) in each direction, in order
//     (50 ms more per round trip), for ferry and rsync alike;
//   - million: ferry only, -million-files (1,000,000) empty files in
//     1,000-file directories on -million-dir (/dev/shm), daemon root there
//     too; the sender is stopped with SIGTERM after -million-time (3m) if
//     not done, and the run reports how many files were committed, sender
//     and daemon peak RSS, and each side's VmHWM every 10 s.
//
// Each round runs every workload with every tool in turn, each to a fresh
// destination after sync(2) and the pause: ferry (`ferry send --json` of
// the directory to a fresh ferryd), rsync (`rsync -a --stats DIR
// rsync://.../bench/` to a fresh rsync daemon) and rsync-fsync (the same
// with --fsync, the durable reference; an rsync without --fsync gets
// `sync -f` on the destination inside the clock). Each result is checked:
// ferry's records must all be committed and add up to the tree's files and
// bytes, rsync's destination must hold them. The table gives medians, the
// rounds' raw times, and the ratios of ferry's wall time to each rsync
// form's in the same round (median over rounds), so that a round slowed by
// other processes on the machine slows both sides of its ratio. Bytes sent
// are ferry's sent_bytes summed over the records (chunk data only, no
// framing) and rsync's "Total bytes sent" (everything it wrote). The load
// average before and after the tree runs is recorded too.
//
// # Fsync strategies for group commit
//
// `ferrybench fsync` (or `make bench-fsync`, flags in FSYNCFLAGS) times
// ways to make N files of 4 KiB durable, as issue 9's group commit must:
// for each N in -n (100,1000,5000), on each file system of -dirs (the
// working directory's and $TMPDIR's, once per file system), it writes N
// files round-robin into -d (10) new directories after a sync(2), keeps
// them open, and times one strategy:
//
//   - seq-fsync, seq-fdatasync: one call per file in turn;
//   - parK-fsync, parK-fdatasync: the same from K = 2, 4, 8, 16 goroutines;
//   - sfr+seq-fsync, sfr+par8-fsync: sync_file_range(SYNC_FILE_RANGE_WRITE)
//     on every file first, then fsync each;
//   - syncfs: one syncfs(2) on the file system, which also covers the
//     directories;
//   - syncfs+bg-dd, par8-fsync+bg-dd: the same while `dd` writes a 1 GiB
//     file to the same file system (started 1 s before), to show that
//     syncfs waits for everything dirty on the file system, not just ours.
//
// All but syncfs then fsync each directory once; that time is its own
// column. Strategies interleave within each of -reps (3) repetitions;
// figures are medians, per file and as a ratio to seq-fsync. Results go to
// bench/fsync.json (-out).
//
// What the daemon does (issue 9): ParallelFsync, 16 at a time, then each
// directory once. sfr+par8-fsync was the fastest per-file strategy here
// (bench/fsync.json, bench/fsync-rerun.json: 63-70 us/file at 1,000
// files against 82-125 for par8/par16-fsync, 0.7-0.9x of them at 5,000
// files, with repetitions 2-5x apart on this shared machine). In the daemon
// the same hint, given as each chunk is written (DirStore.StartWriteback),
// did not win on the 20,000-file tree (bench/results-sfr.json: ferry's
// time against rsync -a --fsync's in the same rounds 0.62 and 0.92 off,
// 0.65 and 0.67 on; against rsync -a 1.43 and 1.58 off, 1.56 and 1.29
// on), and cost the daemon 1.4 s more CPU (7.2 and 7.7 s off, 8.7 and
// 9.0 s on): the writeback it starts runs in the daemon's threads instead
// of the kernel's flusher. syncfs is fastest alone and worst beside
// another writer (11x slower at 100 files beside dd). So StartWriteback
// stays off.
//
// Since then (issue 9, second session) the daemon makes a group durable
// with syncfs when the machine holds little dirty data
// (daemon.SyncFSWhenQuiet): one syncfs(2) for the group's files, then,
// after they are linked into place, one more for the directories,
// instead of one fsync per file and per directory; ParallelFsync when
// Dirty+Writeback in /proc/meminfo exceed 32 MiB (a writer such as dd
// beside it), for a group of one file (a lone transfer), on a kernel
// before 5.8 (whose syncfs does not report writeback errors), and for
// good once a syncfs failed (the group then falls back to each file's
// fsync, which reports its own loss). What decided it was the "clean"
// state below: right after sync, with no file deleted within the last
// minute, rsync -a takes 1.1-1.2 s for the 20,000-file tree and ferry
// with ParallelFsync 3.6-3.9 s (3.0x; bench/results-trees-syncfs.json,
// "before"), of which the fsyncs were the largest part (ext4 here runs
// without a journal: each fsync writes the file's inode block and
// flushes the device). With syncfs and fewer calls per file (no removal
// of files that are not there, partials opened, linked, timed and
// removed through kept directory handles, missing directories
// remembered) ferry's daemon CPU for the 20,000 files fell from 4.9 s
// to 2.3 s and its time from 3.7 s to 2.0 s (1.71x rsync -a's 1.12 s,
// 0.43x rsync -a --fsync's 4.60 s, medians of 3 rounds and of the
// per-round ratios); for Go's src tree from 3.3 s to 1.7 s of CPU and
// from 2.5 s to 1.5 s (1.74x rsync -a's 0.89 s, 0.48x --fsync's 3.17
// s). In the churned state the same build took 5.1 s (1.04x rsync -a,
// 0.57x --fsync) and 4.6 s (0.52x, 0.41x). syncfs alone, before the
// per-file calls were cut, gave 2.3 s (1.99x) and 2.0 s (2.31x): not
// enough by itself. All in bench/results-trees-syncfs.json.
//
// On this machine the state that matters for trees is not memory but
// ext4's inode allocator: without a journal it skips inodes deleted less
// than a minute ago (find_inode_bit, recently_deleted), and scans them
// one by one for every new file. Creating 20,000 files right after
// deleting as many costs 5-10 CPU-seconds in the kernel (cp -a of the
// small tree: 0.6 s clean, 5.8-12 s right after a deletion), for every
// tool alike. `-tree-keep` keeps each run's destination until the end,
// so that no run starts within a minute of a deletion by the benchmark
// ("clean"); without it each run follows the deletion of the previous
// run's copy ("churned"), as in bench/results-trees-final.json.
//
// # Profiling
//
// `ferrybench -profile` instead sends one file (-profile-size, 1 GiB by
// default) from transfer.Client to daemon.Server in this process over a
// loopback socket, with a CPU profile to bench/out/cpu.prof. Sender and
// daemon share the process there, much as they share the two cores in the
// benchmark. Read it with `go tool pprof -top bin/ferrybench
// bench/out/cpu.prof`. With -trace FILE it also writes an execution trace
// of the transfer, which shows where each side's goroutines wait (`go tool
// trace FILE`: goroutine analysis, network and syscall blocking).
// The session runs inside TLS 1.3 with a generated key, as every TCP
// session of ferry does (-profile-tls=false for plaintext); the
// sender's and the daemon's samples carry the label side=sender or
// side=daemon, so `go tool pprof -tagfocus side=daemon` shows one side.
package main
