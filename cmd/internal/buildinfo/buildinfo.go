// Package buildinfo reports the version of Palisade's binaries.
package buildinfo

import (
	"fmt"
	"runtime"
	"runtime/debug"
)

// Version is set at link time (-ldflags "-X .../buildinfo.Version=v0.1.0"); without it
// the VCS revision recorded by the Go toolchain is shown.
var Version = "dev"

// String describes the running binary: version, revision and Go version.
func String() string {
	rev, dirty := "unknown", ""
	if bi, ok := debug.ReadBuildInfo(); ok {
		for _, s := range bi.Settings {
			switch s.Key {
			case "vcs.revision":
				rev = s.Value
				if len(rev) > 12 {
					rev = rev[:12]
				}
			case "vcs.modified":
				if s.Value == "true" {
					dirty = "-dirty"
				}
			}
		}
	}
	return fmt.Sprintf("%s (revision %s%s, %s %s/%s)", Version, rev, dirty, runtime.Version(), runtime.GOOS, runtime.GOARCH)
}
