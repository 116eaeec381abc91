// Package version holds the version stamped into the binaries at build time
// (-ldflags "-X github.com/tether-edge/tether/internal/version.Version=...").
package version

import "runtime/debug"

// Version of this build.
var Version = ""

// String returns the stamped version, else the module version, else "dev".
func String() string {
	if Version != "" {
		return Version
	}
	if bi, ok := debug.ReadBuildInfo(); ok && bi.Main.Version != "" && bi.Main.Version != "(devel)" {
		return bi.Main.Version
	}
	return "dev"
}
