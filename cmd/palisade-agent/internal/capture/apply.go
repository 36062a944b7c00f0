package capture

import (
	"bytes"
	"context"
	"fmt"
	"os/exec"
	"strings"
)

// Apply makes the network namespace of the calling process capture traffic as c
// says, for each family: it reads the nat table with iptables-save (ip6tables-save
// for IPv6) and replaces what an earlier run installed with c's rules in one
// iptables-restore --noflush transaction, so rules of others in the table stay and
// a failure changes nothing. The programs are looked up on PATH. It needs
// CAP_NET_ADMIN (and CAP_NET_RAW for iptables' own sockets).
func Apply(ctx context.Context, c Config, families ...Family) error {
	if err := c.Validate(); err != nil {
		return err
	}
	for _, f := range families {
		save, restore := f.commands()
		installed, err := run(ctx, "", save, "-t", "nat")
		if err != nil {
			return fmt.Errorf("capture %s: %w", f, err)
		}
		// -w: wait for the xtables lock instead of failing when another
		// program (a CNI plugin, kube-proxy) holds it.
		if _, err := run(ctx, c.Script(f, installed), restore, "--noflush", "-w"); err != nil {
			return fmt.Errorf("capture %s: %w", f, err)
		}
	}
	return nil
}

// run runs a program with stdin and returns its standard output; a failure carries
// its standard error.
func run(ctx context.Context, stdin, name string, args ...string) (string, error) {
	path, err := exec.LookPath(name)
	if err != nil {
		return "", fmt.Errorf("%s is needed (install iptables): %w", name, err)
	}
	cmd := exec.CommandContext(ctx, path, args...)
	cmd.Stdin = strings.NewReader(stdin)
	var stdout, stderr bytes.Buffer
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	if err := cmd.Run(); err != nil {
		return "", fmt.Errorf("%s %s: %w: %s", name, strings.Join(args, " "), err, strings.TrimSpace(stderr.String()))
	}
	return stdout.String(), nil
}
