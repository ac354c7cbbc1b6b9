package main

import (
	"crypto/rand"
	"encoding/base64"
	"encoding/json"
	"flag"
	"fmt"
	"io"
	"net/http"
	"text/tabwriter"
	"time"

	"github.com/karuta-tracker/karuta/node"
)

// clusterCmd runs `karuta cluster status`, or `karuta cluster tls` (see
// clusterTLSCmd). Status fetches a node's /cluster and
// prints it as a table, or as the JSON itself with --json.
func clusterCmd(args []string, stdout, stderr io.Writer) int {
	if len(args) > 0 && args[0] == "tls" {
		return clusterTLSCmd(args[1:], stdout, stderr)
	}
	const usage = "usage: karuta cluster status [--addr HOST:PORT] [--json]\n       karuta cluster keygen\n       karuta cluster tls ca|cert ...\n"
	if len(args) == 1 && args[0] == "keygen" {
		return keygen(stdout, stderr)
	}
	if isHelp(args) {
		fmt.Fprint(stdout, usage)
		return exitOK
	}
	if len(args) == 0 || args[0] != "status" {
		fmt.Fprint(stderr, "karuta: "+usage)
		return exitUsage
	}
	fs := flag.NewFlagSet("cluster status", flag.ContinueOnError)
	fs.SetOutput(stderr)
	addr := fs.String("addr", "127.0.0.1:6880", "a node's metrics `address` (metrics.addr)")
	asJSON := fs.Bool("json", false, "print the node's JSON as is")
	timeout := fs.Duration("timeout", 5*time.Second, "how long to wait for the node")
	if err := fs.Parse(args[1:]); err != nil {
		return parseExit(err)
	}
	client := &http.Client{Timeout: *timeout}
	resp, err := client.Get("http://" + *addr + "/cluster")
	if err != nil {
		fmt.Fprintf(stderr, "karuta: cluster status: %v\n", err)
		return exitFailure
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(io.LimitReader(resp.Body, 16<<20))
	if err != nil {
		fmt.Fprintf(stderr, "karuta: cluster status: read %s: %v\n", *addr, err)
		return exitFailure
	}
	if resp.StatusCode != http.StatusOK {
		fmt.Fprintf(stderr, "karuta: cluster status: %s answered %s: %s", *addr, resp.Status, body)
		return exitFailure
	}
	if *asJSON {
		_, _ = stdout.Write(body)
		return exitOK
	}
	var st node.ClusterStatus
	if err := json.Unmarshal(body, &st); err != nil {
		fmt.Fprintf(stderr, "karuta: cluster status: %s did not answer with cluster JSON: %v\n", *addr, err)
		return exitFailure
	}
	printStatus(stdout, st)
	return exitOK
}

// keygen prints a new random key for cluster.secret_keys (32 bytes, the
// most memberlist takes) or frontends.udp.connection_id_keys, base64.
func keygen(stdout, stderr io.Writer) int {
	var k [32]byte
	if _, err := rand.Read(k[:]); err != nil {
		fmt.Fprintf(stderr, "karuta: cluster keygen: %v\n", err)
		return exitFailure
	}
	fmt.Fprintln(stdout, base64.StdEncoding.EncodeToString(k[:]))
	return exitOK
}

// printStatus merges gossip states with ring shares: members that are
// dead, left or leaving own nothing and show no share.
func printStatus(w io.Writer, st node.ClusterStatus) {
	settled := "no (swarms are moving)"
	if st.Ring.Settled {
		settled = "yes"
	}
	fmt.Fprintf(w, "node %s  epoch %d  replicas %d  settled %s\n\n", st.Node, st.Ring.Epoch, st.Ring.Replicas, settled)
	tw := tabwriter.NewWriter(w, 0, 4, 2, ' ', 0)
	fmt.Fprintln(tw, "MEMBER\tSTATE\tDATACENTER\tZONE\tDATA\tSHARE\tQUEUE")
	inRing := map[string]int{}
	for i, m := range st.Ring.Members {
		inRing[m.Name] = i
	}
	seen := map[string]bool{}
	for _, m := range st.Members {
		seen[m.Name] = true
		share, queue := "-", "-"
		if i, ok := inRing[m.Name]; ok {
			share = fmt.Sprintf("%.1f%%", 100*st.Ring.Members[i].Share)
			queue = fmt.Sprint(st.Ring.Members[i].Queue)
		}
		fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\t%s\t%s\n", m.Name, m.State, dash(m.Datacenter), dash(m.Zone), m.DataAddr, share, queue)
	}
	for _, m := range st.Ring.Members {
		if !seen[m.Name] {
			fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\t%.1f%%\t%d\n", m.Name, "alive", dash(m.Datacenter), dash(m.Zone), m.Data, 100*m.Share, m.Queue)
		}
	}
	_ = tw.Flush()
}

func dash(s string) string {
	if s == "" {
		return "-"
	}
	return s
}
