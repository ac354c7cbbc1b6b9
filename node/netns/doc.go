// Package netns holds Karuta's failover tests on real networks: clusters
// of `karuta serve` processes, each in its own Linux network namespace,
// cut and healed by the network itself while a probe checks every answer.
// The tests need root and build with `-tags netns` (`make netns`).
package netns
