//go:build remote

package podman

// ServicePID returns the pid of the service Connect started, 0 if none.
func ServicePID(d *Driver) int {
	if d.svc == nil {
		return 0
	}
	d.svc.mu.Lock()
	defer d.svc.mu.Unlock()
	if d.svc.cmd == nil {
		return 0
	}
	return d.svc.cmd.Process.Pid
}
