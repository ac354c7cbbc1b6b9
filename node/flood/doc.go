// Package flood holds Karuta's flood test: a real `karuta serve` in a
// 512 MiB memory cgroup (v1 or v2; GOMEMLIMIT where no cgroup can be made)
// flooded with announces of random torrents over UDP and HTTP, from one
// loopback address and from 2,000, while legitimate clients announce. It
// builds with `-tags flood` (`make flood`); FLOOD_DURATION sets each phase's
// length (5s by default, 60s for the soak in README.md).
package flood
