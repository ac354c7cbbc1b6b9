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
	"github.com/karuta-tracker/karuta/node/cluster"
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
// dead, left or leaving own nothing and show no share. Members are matched
// by data address, so two processes sharing a name show as two lines.
func printStatus(w io.Writer, st node.ClusterStatus) {
	settled := "no (swarms are moving)"
	if st.Ring.Settled {
		settled = "yes"
	}
	whole := "no"
	if st.Ring.Whole {
		whole = "yes"
	}
	fmt.Fprintf(w, "node %s  epoch %d  %s  settled %s  whole %s  health %s\n", st.Node, st.Ring.Epoch, owners(st), settled, whole, st.Health)
	for _, p := range st.Problems {
		fmt.Fprintf(w, "  problem: %s\n", p)
	}
	fmt.Fprintln(w)
	tw := tabwriter.NewWriter(w, 0, 4, 2, ' ', 0)
	fmt.Fprintln(tw, "MEMBER\tSTATE\tDATACENTER\tZONE\tDATA\tLINK\tSHARE\tQUEUE")
	inRing := map[string]int{}
	for i, m := range st.Ring.Members {
		inRing[m.Data] = i
	}
	row := func(m cluster.MemberStatus, state string) {
		link := string(m.Link)
		if m.Name == st.Ring.Self && link == "" {
			link = "self"
		}
		fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\t%s\t%.1f%%\t%d\n", m.Name, state, dash(m.Datacenter), dash(m.Zone), m.Data, dash(link), 100*m.Share, m.Queue)
	}
	seen := map[string]bool{}
	for _, m := range st.Members {
		if i, ok := inRing[m.DataAddr]; ok && !seen[m.DataAddr] {
			seen[m.DataAddr] = true
			row(st.Ring.Members[i], string(m.State))
			continue
		}
		fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\t-\t-\t-\n", m.Name, m.State, dash(m.Datacenter), dash(m.Zone), dash(m.DataAddr))
	}
	for _, m := range st.Ring.Members {
		if !seen[m.Data] {
			row(m, "alive")
		}
	}
	_ = tw.Flush()
}

// owners says how many members own each swarm, and why when it is not
// cluster.replicas: under full_replication every member owns every swarm.
func owners(st node.ClusterStatus) string {
	r := st.Ring
	switch {
	case r.Owners <= r.Replicas:
		return fmt.Sprintf("replicas %d", r.Replicas)
	case r.Owners == len(r.Members):
		return fmt.Sprintf("replicas %d, owners %d (full replication)", r.Replicas, r.Owners)
	}
	return fmt.Sprintf("replicas %d, owners %d (every_datacenter)", r.Replicas, r.Owners)
}

func dash(s string) string {
	if s == "" {
		return "-"
	}
	return s
}
