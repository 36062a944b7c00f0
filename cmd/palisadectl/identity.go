package main

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
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
	body, _ := json.Marshal(caserver.CreateTokenRequest{SPIFFEID: *id, TTL: ttl.String()})
	client := &http.Client{Timeout: 10 * time.Second, Transport: &http.Transport{
		DialContext: func(ctx context.Context, _, _ string) (net.Conn, error) {
			return (&net.Dialer{}).DialContext(ctx, "unix", *socket)
		},
	}}
	resp, err := client.Post("http://palisaded/v1/identity/tokens", "application/json", bytes.NewReader(body))
	if err != nil {
		return fmt.Errorf("palisaded admin socket %s: %w", *socket, err)
	}
	defer resp.Body.Close()
	data, _ := io.ReadAll(io.LimitReader(resp.Body, 1<<20))
	if resp.StatusCode != http.StatusCreated {
		return fmt.Errorf("palisaded refused: %s", strings.TrimSpace(string(data)))
	}
	if *output == "json" {
		_, err = stdout.Write(data)
		return err
	}
	var created caserver.CreateTokenResponse
	if err := json.Unmarshal(data, &created); err != nil {
		return fmt.Errorf("palisaded answer: %w", err)
	}
	fmt.Fprintln(stdout, created.Token)
	fmt.Fprintf(stderr, "token for %s, usable once until %s\n", created.SPIFFEID, created.ExpiresAt.Format(time.RFC3339))
	return nil
}

func defaultAdminSocket() string { return defaults.AdminSocket(defaults.DataDir()) }
