// Package exec is the "exec" driver: it runs a task's command as a plain
// process on the device, for legacy applications that cannot be put in a
// container.
//
// Podman keeps its containers' state in its own database; plain processes
// have no such keeper, so the driver keeps one small JSON record per
// instance in its directory (name, labels, pid, the process's start time in
// clock ticks from /proc/PID/stat, the boot id, and the exit code once
// known) and the instance's stdout and stderr in NAME.log beside it. List
// reads the records, never memory, and checks each pid against /proc, so a
// restarted edged adopts processes that are still running and a recycled
// pid is never mistaken for the instance.
//
// Processes run in their own session (setsid) so they survive an edged
// restart, and Stop and Remove signal the whole process group. The exit
// code of a process is known when this edged is its parent (it waits for
// it); a process that died while no edged was its parent is reported exited
// with code -1. Resources are not enforced; Linux only.
//
// Concurrency: Driver is safe for concurrent use; read-modify-write of the
// records is serialised by a flock on DIR/.lock, which also covers two
// Driver values over one directory (tests simulating a restart).
package exec
