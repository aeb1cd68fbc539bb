package storage

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"strings"
)

// Client talks to a remote agent's control API; the failover coordinator
// uses it to start and stop a PBX node's group and to read its DRBD state
// (Client.DRBDState is a StateFunc for PeerDisconnectFencer).
type Client struct {
	// BaseURL is e.g. "http://10.0.0.11:7790".
	BaseURL string
	// Token is the bearer token of the agent.
	Token string
	// HTTP is the client used; nil means http.DefaultClient. Give it no
	// overall timeout shorter than a group start; use ctx instead.
	HTTP *http.Client
}

func (c Client) do(ctx context.Context, method, path string, body any, out any) (int, error) {
	var rd io.Reader
	if body != nil {
		b, err := json.Marshal(body)
		if err != nil {
			return 0, err
		}
		rd = bytes.NewReader(b)
	}
	req, err := http.NewRequestWithContext(ctx, method, strings.TrimRight(c.BaseURL, "/")+path, rd)
	if err != nil {
		return 0, fmt.Errorf("agent %s: %w", c.BaseURL, err)
	}
	if c.Token != "" {
		req.Header.Set("Authorization", "Bearer "+c.Token)
	}
	if body != nil {
		req.Header.Set("Content-Type", "application/json")
	}
	hc := c.HTTP
	if hc == nil {
		hc = http.DefaultClient
	}
	resp, err := hc.Do(req)
	if err != nil {
		return 0, fmt.Errorf("agent %s %s: %w", method, path, err)
	}
	defer resp.Body.Close()
	if err := json.NewDecoder(io.LimitReader(resp.Body, 1<<20)).Decode(out); err != nil {
		return resp.StatusCode, fmt.Errorf("agent %s %s: status %d, bad body: %w", method, path, resp.StatusCode, err)
	}
	return resp.StatusCode, nil
}

// Status fetches the agent's status.
func (c Client) Status(ctx context.Context) (Status, error) {
	var st Status
	code, err := c.do(ctx, http.MethodGet, PathStatus, nil, &st)
	if err == nil && code != http.StatusOK {
		err = fmt.Errorf("agent %s status: HTTP %d", c.BaseURL, code)
	}
	return st, err
}

// DRBDState fetches the agent's DRBD state (a StateFunc).
func (c Client) DRBDState(ctx context.Context) (DRBDState, error) {
	st, err := c.Status(ctx)
	return st.DRBD, err
}

// Start asks the agent to start its group; a refusal or failure comes back
// as an error wrapping the matching sentinel (ErrPeerPrimary, ...).
func (c Client) Start(ctx context.Context, opts StartOptions) (Result, error) {
	return c.post(ctx, PathStart, opts)
}

// Stop asks the agent to stop its group.
func (c Client) Stop(ctx context.Context) (Result, error) {
	return c.post(ctx, PathStop, nil)
}

func (c Client) post(ctx context.Context, path string, body any) (Result, error) {
	var res Result
	code, err := c.do(ctx, http.MethodPost, path, body, &res)
	if err != nil {
		return res, err
	}
	if code == http.StatusOK {
		return res, nil
	}
	if code == http.StatusUnauthorized {
		return res, fmt.Errorf("agent %s %s: %w", c.BaseURL, path, ErrUnauthorized)
	}
	for _, cd := range codes {
		if cd.code == res.Code {
			return res, fmt.Errorf("agent %s %s: %w: %s", c.BaseURL, path, cd.err, res.Error)
		}
	}
	return res, fmt.Errorf("agent %s %s: HTTP %d: %s", c.BaseURL, path, code, res.Error)
}

// ClearSplitBrain tells the agent an operator resolved the split brain.
func (c Client) ClearSplitBrain(ctx context.Context) error {
	var st Status
	code, err := c.do(ctx, http.MethodPost, PathClearSplitBrain, nil, &st)
	if err != nil {
		return err
	}
	switch code {
	case http.StatusOK:
		return nil
	case http.StatusUnauthorized:
		return fmt.Errorf("agent %s clear split brain: %w", c.BaseURL, ErrUnauthorized)
	}
	return fmt.Errorf("agent %s clear split brain: HTTP %d", c.BaseURL, code)
}
