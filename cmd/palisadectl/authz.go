package main

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/palisade-mesh/palisade/authz"
	"github.com/palisade-mesh/palisade/mesh"
)

func runAuthz(args []string, stdout, stderr io.Writer) error {
	if len(args) >= 1 && args[0] == "explain" {
		return runExplain(args[1:], stdout, stderr)
	}
	fmt.Fprintln(stderr, "Usage: palisadectl authz explain --from SPIFFE_ID --to HOST[:PORT] [flags]")
	if len(args) == 0 || args[0] == "-h" || args[0] == "--help" {
		return nil
	}
	return fmt.Errorf("%w: unknown authz command %q", errUsage, strings.Join(args, " "))
}

// headerFlags is a repeatable K=V flag.
type headerFlags map[string]string

func (h headerFlags) String() string { return "" }
func (h headerFlags) Set(v string) error {
	k, val, ok := strings.Cut(v, "=")
	if !ok || k == "" {
		return fmt.Errorf("%q: use NAME=VALUE", v)
	}
	h[strings.ToLower(k)] = val
	return nil
}

func runExplain(args []string, stdout, stderr io.Writer) error {
	fs := newFlagSet("authz explain", "authz explain --from SPIFFE_ID --to HOST[:PORT] [flags]",
		"Asks a running palisaded to decide a request described on the command line, by the\npolicy in force, and prints the decision with every policy and rule that made it\n(the explanation the decision log records). The request goes to the first\nendpoint (workload) of the service named by --to.", stderr)
	var r authz.ExplainRequest
	headers := headerFlags{}
	fs.StringVar(&r.From, "from", "", "the caller's SPIFFE ID, e.g. spiffe://cluster.local/ns/default/sa/sleep (empty: a plaintext caller)")
	fs.StringVar(&r.To, "to", "", "the service called: its host (or a short name such as reviews.default) and optionally :PORT")
	fs.StringVar(&r.Method, "method", "GET", "HTTP method")
	fs.StringVar(&r.Path, "path", "/", "request path, with the query if any")
	fs.Var(headers, "header", "request header NAME=VALUE; repeatable")
	fs.StringVar(&r.JWT, "jwt", "", "a JWT, sent as 'authorization: Bearer JWT'")
	addr := fs.String("palisaded", "127.0.0.1:15014", "palisaded's monitoring address (--monitoring-address)")
	output := fs.String("o", "text", "output: text or json")
	if _, err := parse(fs, args); err != nil {
		return err
	}
	if r.To == "" {
		return fmt.Errorf("%w: --to is required", errUsage)
	}
	if *output != "text" && *output != "json" {
		return fmt.Errorf("%w: -o %q: use text or json", errUsage, *output)
	}
	r.Headers = headers
	body, _ := json.Marshal(r)
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, "http://"+*addr+"/debug/authz/explain", bytes.NewReader(body))
	if err != nil {
		return err
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		return fmt.Errorf("asking palisaded at %s: %w", *addr, err)
	}
	defer resp.Body.Close()
	answer, err := io.ReadAll(io.LimitReader(resp.Body, 16<<20))
	if err != nil {
		return err
	}
	if resp.StatusCode != http.StatusOK {
		return fmt.Errorf("palisaded: %s", strings.TrimSpace(string(answer)))
	}
	if *output == "json" {
		_, err := stdout.Write(answer)
		return err
	}
	var e authz.Explanation
	if err := json.Unmarshal(answer, &e); err != nil {
		return fmt.Errorf("palisaded's answer: %w", err)
	}
	printExplanation(stdout, e)
	return nil
}

func printExplanation(w io.Writer, e authz.Explanation) {
	verdict := "ALLOW"
	if !e.Allowed {
		verdict = "DENY"
	}
	fmt.Fprintf(w, "%s (HTTP %d)", verdict, e.HTTPStatus)
	if e.Reason != "" {
		fmt.Fprintf(w, ": %s", e.Reason)
	}
	fmt.Fprintln(w)
	labels := make([]string, 0, len(e.Labels))
	for _, k := range mesh.SortedKeys(e.Labels) {
		labels = append(labels, k+"="+e.Labels[k])
	}
	fmt.Fprintf(w, "workload: %s:%d in namespace %s {%s}\n", e.Service, e.Port, e.Namespace, strings.Join(labels, ","))
	if e.Revision != "" {
		fmt.Fprintf(w, "policy revision: %s\n", e.Revision)
	}
	if e.Failure != "" {
		fmt.Fprintf(w, "no policy decided (%s): the mesh fails closed\n", e.Failure)
	}
	if len(e.Reasons) == 0 {
		return
	}
	fmt.Fprintln(w)
	tw := tabwriter.NewWriter(w, 0, 4, 2, ' ', 0)
	fmt.Fprintln(tw, "KIND\tPOLICY\tACTION\tRULE\tEFFECT\tDETAIL")
	for _, r := range e.Reasons {
		m, _ := r.(map[string]any)
		field := func(k string) string {
			if v, ok := m[k]; ok && v != nil {
				return fmt.Sprint(v)
			}
			return "-"
		}
		fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\t%s\n", field("kind"), field("policy"), field("action"), field("rule"), field("effect"), field("detail"))
	}
	tw.Flush()
}
