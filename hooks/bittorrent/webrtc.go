package bittorrent

import (
	"encoding/binary"
	"net/netip"
)

// A WebRTC peer (a browser or other WebTorrent client) has no address other
// peers can dial: it is reached through the tracker's WebSocket, and so
// through the node holding that socket. Swarms keep such a peer under a
// WebRTC address that names the socket instead of a host:
//
//	0100:0000:0000:0000:NNNN:NNNN:CCCC:CCCC port 1
//
// in the discard-only prefix 100::/64 (RFC 6666), which no real peer
// announces from, with N the node that holds the socket (NodeID) and C the
// socket's number on that node. Stores keep these peers apart from IPv4
// and IPv6 peers, so HTTP and UDP answers never list them and WebSocket
// answers list nothing else, while a swarm's counts include them all.
var webrtcPrefix = netip.MustParsePrefix("100::/64")

// webrtcPort is the port of every WebRTC address; stores ignore port 0.
const webrtcPort = 1

// WebRTCAddr is the WebRTC address of socket conn on node.
func WebRTCAddr(node, conn uint32) netip.AddrPort {
	var b [16]byte
	b[0] = 0x01
	binary.BigEndian.PutUint32(b[8:], node)
	binary.BigEndian.PutUint32(b[12:], conn)
	return netip.AddrPortFrom(netip.AddrFrom16(b), webrtcPort)
}

// IsWebRTC reports whether a is a WebRTC address (see WebRTCAddr).
func IsWebRTC(a netip.AddrPort) bool {
	return a.Addr().Is6() && !a.Addr().Is4In6() && webrtcPrefix.Contains(a.Addr())
}

// IsWebRTCIP reports whether ip lies in the WebRTC prefix, so frontends
// that take addresses from the network can refuse to store a real client
// under one.
func IsWebRTCIP(ip netip.Addr) bool { return ip.Is6() && webrtcPrefix.Contains(ip) }

// WebRTCParts returns the node and socket a WebRTC address names; ok is
// false for any other address.
func WebRTCParts(a netip.AddrPort) (node, conn uint32, ok bool) {
	if !IsWebRTC(a) {
		return 0, 0, false
	}
	b := a.Addr().As16()
	return binary.BigEndian.Uint32(b[8:]), binary.BigEndian.Uint32(b[12:]), true
}

// SignalKind says what a Signal carries.
type SignalKind uint8

// Signal kinds. Their values are part of the node-to-node wire format.
const (
	// SignalOffer is a WebRTC offer from one peer of a swarm to another.
	SignalOffer SignalKind = 1
	// SignalAnswer is the answer to an offer, on its way back.
	SignalAnswer SignalKind = 2
)

// MaxOfferIDLen bounds an offer ID: clients send 20 random bytes, as a
// binary string or in hex.
const MaxOfferIDLen = 64

// Signal is one WebRTC signaling message relayed between two WebSocket
// peers of a swarm, possibly through two nodes: an offer from From to To,
// or an answer from From back to the offerer To. SDP is the client's
// offer or answer object, as JSON, relayed without being interpreted.
type Signal struct {
	Kind     SignalKind
	InfoHash InfoHash
	// From and To are WebRTC addresses (WebRTCAddr).
	From   netip.AddrPort
	To     netip.AddrPort
	FromID PeerID
	// ToID is the peer ID the receiver must hold for the signal to be
	// delivered: the target's for an offer, the offerer's for an answer.
	ToID PeerID
	// OfferID is the offerer's name for the offer, at most MaxOfferIDLen
	// bytes, echoed back with the answer.
	OfferID string
	SDP     []byte
}
