package jwt

import (
	"context"
	"fmt"
	"io"
	"net/http"
	"time"

	"go.uber.org/zap"
)

// refresh fetches the JWKS at once, then every jwks_refresh. A failed fetch
// keeps the keys in force and is retried sooner, backing off from retryFirst
// to retryMax. first is closed after the first attempt. It returns when ctx
// ends.
func (h *Hook) refresh(ctx context.Context, first chan<- struct{}) {
	defer h.wg.Done()
	backoff := h.retryFirst
	maxBackoff := min(retryMax, h.every)
	timer := time.NewTimer(0)
	defer timer.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-timer.C:
		}
		fctx, cancel := context.WithTimeout(ctx, fetchTimeout)
		err := h.fetch(fctx)
		cancel()
		if first != nil {
			close(first)
			first = nil
		}
		wait := h.every
		if err != nil {
			if ctx.Err() != nil {
				return
			}
			h.log.Warn("JWKS fetch failed; keeping the keys in force",
				zap.String("url", h.cfg.JWKSURL), zap.Duration("retry_in", backoff), zap.Error(err))
			wait = backoff
			backoff = min(2*backoff, maxBackoff)
		} else {
			backoff = h.retryFirst
		}
		timer.Reset(wait)
	}
}

// fetch gets the JWKS and, if it holds a usable key, puts it in force. A
// fetch that finishes after a later one has been applied is dropped, so a
// slow Reload cannot bring back older keys.
func (h *Hook) fetch(ctx context.Context) error {
	seq := h.fetchSeq.Add(1)
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, h.cfg.JWKSURL, nil)
	if err != nil {
		return fmt.Errorf("fetch JWKS: %w", err)
	}
	req.Header.Set("Accept", "application/jwk-set+json, application/json")
	resp, err := h.client.Do(req)
	if err != nil {
		return fmt.Errorf("fetch JWKS: %w", err)
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return fmt.Errorf("fetch JWKS %s: status %s", h.cfg.JWKSURL, resp.Status)
	}
	body, err := io.ReadAll(io.LimitReader(resp.Body, maxJWKSBytes+1))
	if err != nil {
		return fmt.Errorf("fetch JWKS %s: %w", h.cfg.JWKSURL, err)
	}
	if len(body) > maxJWKSBytes {
		return fmt.Errorf("fetch JWKS %s: larger than %d bytes", h.cfg.JWKSURL, maxJWKSBytes)
	}
	keys, skipped, err := parseJWKS(body)
	if err != nil {
		return fmt.Errorf("JWKS %s: %w", h.cfg.JWKSURL, err)
	}
	if len(skipped) > 0 {
		h.log.Debug("JWKS keys skipped", zap.String("url", h.cfg.JWKSURL), zap.Strings("keys", skipped))
	}
	h.mu.Lock()
	defer h.mu.Unlock()
	if seq < h.jwksSeq {
		return nil
	}
	h.jwksSeq = seq
	h.jwks = keys
	h.jwksValid = true
	h.store()
	return nil
}
