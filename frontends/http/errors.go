package http

import "github.com/karuta-tracker/karuta/hooks/bittorrent"

// Client errors of the HTTP frontend, shown to clients as failure reasons
// alongside the shared ones in package bittorrent. Each holds a
// bittorrent.ClientError; they are declared as error so that returning one
// does not allocate a new interface value on the request path.
var (
	ErrMissingLeft     error = bittorrent.ClientError("missing left")
	ErrBadUploaded     error = bittorrent.ClientError("uploaded must be a non-negative integer")
	ErrBadDownloaded   error = bittorrent.ClientError("downloaded must be a non-negative integer")
	ErrBadLeft         error = bittorrent.ClientError("left must be a non-negative integer")
	ErrBadNumWant      error = bittorrent.ClientError("numwant must be a non-negative integer")
	ErrBigUploaded     error = bittorrent.ClientError("uploaded is too large; at most 18446744073709551615")
	ErrBigDownloaded   error = bittorrent.ClientError("downloaded is too large; at most 18446744073709551615")
	ErrBigLeft         error = bittorrent.ClientError("left is too large; at most 18446744073709551615")
	ErrBigNumWant      error = bittorrent.ClientError("numwant is too large; at most 18446744073709551615")
	ErrBadEscape       error = bittorrent.ClientError("malformed percent-encoding in query")
	ErrRequestTooLarge error = bittorrent.ClientError("request too large")
	ErrUnknownClientIP error = bittorrent.ClientError("cannot determine client IP from proxy header")
)

// The shared client errors, converted to error once for the same reason.
var (
	errMissingInfoHash error = bittorrent.ErrMissingInfoHash
	errBadInfoHash     error = bittorrent.ErrBadInfoHash
	errMissingPeerID   error = bittorrent.ErrMissingPeerID
	errBadPeerID       error = bittorrent.ErrBadPeerID
	errMissingPort     error = bittorrent.ErrMissingPort
	errBadPort         error = bittorrent.ErrBadPort
	errBadEvent        error = bittorrent.ErrBadEvent
)

// repeatedErr holds, per announce parameter, the error for giving it twice.
// Repeats are refused rather than resolved because hooks read the raw query
// with Params.Get, which takes the first value: if the frontend took another,
// a hook could check one info_hash while the announce used a different one.
var repeatedErr = func() (errs [numParams]error) {
	for i, name := range paramNames {
		errs[i] = bittorrent.ClientError(name + " given more than once")
	}
	return errs
}()
