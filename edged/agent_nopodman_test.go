//go:build !remote

package edged

import (
	"os"
	"testing"
)

// Without the Podman build tags the Podman scenario cannot be compiled;
// say so instead of passing silently, and fail in CI.
func TestOfflineBootRestartAndAdoptionPodman(t *testing.T) {
	msg := "built without the Podman build tags (use go tool task test)"
	if os.Getenv("CI") != "" {
		t.Fatal(msg)
	}
	t.Skip(msg)
}
