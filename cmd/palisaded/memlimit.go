package main

import (
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"strconv"
	"strings"
)

// memoryLimitShare is the part of a container's memory limit given to the Go heap's
// soft limit: the rest is for what the runtime does not count (stacks, buffers the
// kernel holds) and for the collector to act before the kernel kills the process.
const memoryLimitShare = 0.9

// memoryLimit decides the soft memory limit: the --memory-limit flag ("none": no
// limit), else nothing when GOMEMLIMIT is set (the runtime applies it), else a share
// of the container's memory limit read from the cgroup file system under root.
// It returns 0 for no limit, and where the figure came from.
func memoryLimit(flag, gomemlimit, root string) (int64, string, error) {
	switch {
	case flag == "none":
		return 0, "", nil
	case flag != "":
		n, err := parseBytes(flag)
		return n, "--memory-limit", err
	case gomemlimit != "":
		return 0, "", nil
	}
	limit, err := cgroupMemoryLimit(root)
	if err != nil || limit == 0 {
		return 0, "", err
	}
	return int64(float64(limit) * memoryLimitShare), fmt.Sprintf("%.0f%% of the cgroup memory limit %d", 100*memoryLimitShare, limit), nil
}

// cgroupMemoryLimit reads the memory limit of the process's cgroup: cgroup v2's
// memory.max, else v1's memory.limit_in_bytes. 0 means none ("max", or v1's
// page-rounded maximum).
func cgroupMemoryLimit(root string) (int64, error) {
	for _, file := range []string{"sys/fs/cgroup/memory.max", "sys/fs/cgroup/memory/memory.limit_in_bytes"} {
		b, err := os.ReadFile(filepath.Join(root, file))
		if errors.Is(err, fs.ErrNotExist) {
			continue
		}
		if err != nil {
			return 0, fmt.Errorf("reading the cgroup memory limit: %w", err)
		}
		v := strings.TrimSpace(string(b))
		if v == "max" {
			return 0, nil
		}
		n, err := strconv.ParseInt(v, 10, 64)
		if err != nil {
			return 0, fmt.Errorf("cgroup memory limit %s: %q is not a number", file, v)
		}
		if n >= 1<<62 { // v1 reports "no limit" as the largest page-aligned value
			return 0, nil
		}
		return n, nil
	}
	return 0, nil
}
