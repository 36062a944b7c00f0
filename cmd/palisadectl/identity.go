package main

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"strings"
	"time"

	"github.com/palisade-mesh/palisade/cmd/internal/defaults"
	"github.com/palisade-mesh/palisade/identity/caserver"
)

func runIdentity(args []string, stdout, stderr io.Writer) error {
	if len(args) >= 2 && args[0] == "token" && args[1] == "create" {
		return runTokenCreate(args[2:], stdout, stderr)
	}
	fmt.Fprintln(stderr, "Usage: palisadectl identity token create --spiffe-id ID [--ttl D] [--admin-socket PATH]")
	if len(args) == 0 || args[0] == "-h" || args[0] == "--help" {
		return nil
	}
	return fmt.Errorf("%w: unknown identity command %q", errUsage, strings.Join(args, " "))
}

func runTokenCreate(args []string, stdout, stderr io.Writer) error {
	fs := newFlagSet("identity token create", "identity token create --spiffe-id spiffe://TD/ns/NS/sa/SA [flags]",
		"Creates a single-use bootstrap token with which palisade-agent obtains the first\nX.509-SVID of that identity. The token is printed once; palisaded keeps only its hash.", stderr)
	id := fs.String("spiffe-id", "", "identity the token grants: spiffe://TRUST_DOMAIN/ns/NAMESPACE/sa/SERVICE_ACCOUNT")
	ttl := fs.Duration("ttl", 10*time.Minute, "how long the token can be used")
	socket := fs.String("admin-socket", defaultAdminSocket(), "palisaded's admin socket (--admin-socket of palisaded)")
	output := fs.String("o", "token", "output: token (the token alone) or json")
	if _, err := parse(fs, args); err != nil {
		return err
	}
	if *id == "" {
		return fmt.Errorf("%w: --spiffe-id is required", errUsage)
	}
	if *output != "token" && *output != "json" {
		return fmt.Errorf("%w: -o %q: use token or json", errUsage, *output)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	created, err := caserver.CreateToken(ctx, *socket, caserver.CreateTokenRequest{SPIFFEID: *id, TTL: ttl.String()})
	if err != nil {
		return err
	}
	if *output == "json" {
		return json.NewEncoder(stdout).Encode(created)
	}
	fmt.Fprintln(stdout, created.Token)
	fmt.Fprintf(stderr, "token for %s, usable once until %s\n", created.SPIFFEID, created.ExpiresAt.Format(time.RFC3339))
	return nil
}

func defaultAdminSocket() string { return defaults.AdminSocket(defaults.DataDir()) }
