package simulators

import (
	"bytes"
	"context"
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"math"
	"net"
	"net/http"
	"net/url"
	"strings"
	"sync"
	"time"
)

// ProvisionConcurrency bounds the API requests Provision has in flight.
const ProvisionConcurrency = 16

// provisionClient is shared so connections to the API are reused.
var provisionClient = &http.Client{Timeout: 15 * time.Second}

// deviceBody is the registry entry as POST/PUT /api/v1/devices take it.
type deviceBody struct {
	ID               string                `json:"id"`
	Name             string                `json:"name"`
	Domain           string                `json:"domain"`
	Type             string                `json:"type"`
	Site             string                `json:"site"`
	Location         *LatLon               `json:"location,omitempty"`
	ExpectedInterval int                   `json:"expected_interval"`
	Metrics          map[string]MetricSpec `json:"metrics"`
	Tags             map[string]string     `json:"tags"`
	GatewayID        string                `json:"gateway_id,omitempty"`
	Lifecycle        string                `json:"lifecycle"`
	Secret           string                `json:"secret,omitempty"`
}

// bodyFor sends a zero Location as none rather than as a point at 0°N 0°E:
// a device with no place (the load generator's) gets no location in the
// registry, which would hold it for every device.
func bodyFor(d *DeviceSpec) deviceBody {
	b := deviceBody{
		ID: d.ID, Name: d.Name, Domain: d.Domain, Type: d.Type, Site: d.Site,
		// The registry counts whole seconds; round up so a sub-second
		// interval is not reported as 0 ("unknown").
		ExpectedInterval: max(1, int(math.Ceil(d.ExpectedInterval.Seconds()))),
		Metrics:          d.Metrics, Tags: d.Tags, GatewayID: d.GatewayID,
		Lifecycle: "active",
	}
	if d.Location != (LatLon{}) {
		loc := d.Location
		b.Location = &loc
	}
	return b
}

// APIError is an error answer of the HTTP API.
type APIError struct {
	Status  int
	Code    string
	Message string
}

func (e *APIError) Error() string {
	if e.Code != "" {
		return fmt.Sprintf("HTTP %d %s: %s", e.Status, e.Code, e.Message)
	}
	return fmt.Sprintf("HTTP %d: %s", e.Status, e.Message)
}

// Provision registers devs through the HTTP API at apiURL as an installer
// would, and returns each device's MQTT secret. A device that exists already
// (409) is updated with a freshly generated secret, which rotates it. Up to
// ProvisionConcurrency requests run at once; transient failures (connection
// refused while the API starts, 429, 502-504) are retried with backoff. The
// first lasting error stops the rest and is returned.
func Provision(ctx context.Context, apiURL, token string, devs []DeviceSpec) (map[string]string, error) {
	base, err := apiBase(apiURL)
	if err != nil {
		return nil, err
	}
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()

	var (
		mu       sync.Mutex
		secrets  = make(map[string]string, len(devs))
		firstErr error
		wg       sync.WaitGroup
		sem      = make(chan struct{}, ProvisionConcurrency)
	)
loop:
	for i := range devs {
		select {
		case sem <- struct{}{}:
		case <-ctx.Done():
			break loop
		}
		wg.Add(1)
		go func(d *DeviceSpec) {
			defer wg.Done()
			defer func() { <-sem }()
			secret, err := provisionOne(ctx, base, token, d)
			mu.Lock()
			defer mu.Unlock()
			if err != nil {
				if firstErr == nil {
					firstErr = fmt.Errorf("provision device %s: %w", d.ID, err)
					cancel()
				}
				return
			}
			secrets[d.ID] = secret
		}(&devs[i])
	}
	wg.Wait()
	if firstErr != nil {
		return nil, firstErr
	}
	if err := ctx.Err(); err != nil {
		return nil, fmt.Errorf("provision devices: %w", err)
	}
	return secrets, nil
}

// ProvisionDevice registers one device as Provision does, and returns its
// secret: for a caller that times each registration or paces them itself.
func ProvisionDevice(ctx context.Context, apiURL, token string, d *DeviceSpec) (string, error) {
	base, err := apiBase(apiURL)
	if err != nil {
		return "", err
	}
	return provisionOne(ctx, base, token, d)
}

// apiBase checks apiURL and returns it without a trailing slash.
func apiBase(apiURL string) (string, error) {
	base, err := url.Parse(strings.TrimRight(apiURL, "/"))
	if err != nil || (base.Scheme != "http" && base.Scheme != "https") || base.Host == "" {
		return "", fmt.Errorf("api url %q: want http(s)://host[:port]", apiURL)
	}
	return base.String(), nil
}

func provisionOne(ctx context.Context, base, token string, d *DeviceSpec) (string, error) {
	body := bodyFor(d)
	status, resp, err := apiCall(ctx, http.MethodPost, base+"/api/v1/devices", token, body)
	if err != nil {
		return "", fmt.Errorf("create: %w", err)
	}
	switch status {
	case http.StatusCreated, http.StatusOK:
		secret := secretFrom(resp)
		if secret == "" {
			return "", errors.New("create: the answer carries no secret")
		}
		return secret, nil
	case http.StatusConflict:
		// Already registered (a previous run): rotate its secret, since the
		// old one is not readable.
		body.Secret, err = newSecret()
		if err != nil {
			return "", err
		}
		status, resp, err = apiCall(ctx, http.MethodPut, base+"/api/v1/devices/"+url.PathEscape(d.ID), token, body)
		if err != nil {
			return "", fmt.Errorf("update: %w", err)
		}
		if status != http.StatusOK && status != http.StatusNoContent {
			return "", fmt.Errorf("update: %w", apiError(status, resp))
		}
		return body.Secret, nil
	default:
		return "", fmt.Errorf("create: %w", apiError(status, resp))
	}
}

// apiCall sends one JSON request, retrying what may pass: network errors,
// 429 and 502-504.
func apiCall(ctx context.Context, method, u, token string, body any) (int, []byte, error) {
	payload, err := json.Marshal(body)
	if err != nil {
		return 0, nil, fmt.Errorf("encode body: %w", err)
	}
	backoff := 250 * time.Millisecond
	const attempts = 7
	for attempt := 1; ; attempt++ {
		status, resp, err := apiOnce(ctx, method, u, token, payload)
		retry := err != nil || status == http.StatusTooManyRequests ||
			status == http.StatusBadGateway || status == http.StatusServiceUnavailable || status == http.StatusGatewayTimeout
		if err != nil && !isTransient(err) {
			retry = false
		}
		if !retry || attempt == attempts || ctx.Err() != nil {
			return status, resp, err
		}
		select {
		case <-ctx.Done():
			return 0, nil, ctx.Err()
		case <-time.After(backoff):
		}
		backoff = min(2*backoff, 4*time.Second)
	}
}

func apiOnce(ctx context.Context, method, u, token string, payload []byte) (int, []byte, error) {
	req, err := http.NewRequestWithContext(ctx, method, u, bytes.NewReader(payload))
	if err != nil {
		return 0, nil, fmt.Errorf("build request: %w", err)
	}
	req.Header.Set("Authorization", "Bearer "+token)
	req.Header.Set("Content-Type", "application/json")
	req.Header.Set("Accept", "application/json")
	resp, err := provisionClient.Do(req)
	if err != nil {
		return 0, nil, fmt.Errorf("%s %s: %w", method, u, err)
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(io.LimitReader(resp.Body, 1<<20))
	if err != nil {
		return 0, nil, fmt.Errorf("read answer of %s %s: %w", method, u, err)
	}
	return resp.StatusCode, b, nil
}

func isTransient(err error) bool {
	if errors.Is(err, context.Canceled) || errors.Is(err, context.DeadlineExceeded) {
		return false
	}
	var ne net.Error
	var oe *net.OpError
	return errors.As(err, &ne) || errors.As(err, &oe) || errors.Is(err, io.EOF) || errors.Is(err, io.ErrUnexpectedEOF)
}

// secretFrom finds the secret in a create answer: at the top level, or
// inside a "device" object.
func secretFrom(b []byte) string {
	var ans struct {
		Secret string `json:"secret"`
		Device struct {
			Secret string `json:"secret"`
		} `json:"device"`
	}
	if json.Unmarshal(b, &ans) != nil {
		return ""
	}
	if ans.Secret != "" {
		return ans.Secret
	}
	return ans.Device.Secret
}

func apiError(status int, b []byte) error {
	var e struct {
		Error struct {
			Code    string `json:"code"`
			Message string `json:"message"`
		} `json:"error"`
	}
	if json.Unmarshal(b, &e) == nil && (e.Error.Code != "" || e.Error.Message != "") {
		return &APIError{Status: status, Code: e.Error.Code, Message: e.Error.Message}
	}
	msg := strings.TrimSpace(string(b))
	if len(msg) > 200 {
		msg = msg[:200]
	}
	return &APIError{Status: status, Message: msg}
}

// newSecret returns 32 random hex digits: a password for a device.
func newSecret() (string, error) {
	b := make([]byte, 16)
	if _, err := rand.Read(b); err != nil {
		return "", fmt.Errorf("generate secret: %w", err)
	}
	return hex.EncodeToString(b), nil
}

// EnsureRule creates the alert rule rule (JSON-marshalable, with an "id"),
// or replaces the one of the same id that an earlier run created.
func EnsureRule(ctx context.Context, apiURL, token, id string, rule any) error {
	base, err := apiBase(apiURL)
	if err != nil {
		return err
	}
	status, resp, err := apiCall(ctx, http.MethodPost, base+"/api/v1/rules", token, rule)
	if err != nil {
		return fmt.Errorf("create rule %s: %w", id, err)
	}
	switch status {
	case http.StatusCreated, http.StatusOK:
		return nil
	case http.StatusConflict:
		status, resp, err = apiCall(ctx, http.MethodPut, base+"/api/v1/rules/"+url.PathEscape(id), token, rule)
		if err != nil {
			return fmt.Errorf("update rule %s: %w", id, err)
		}
		if status != http.StatusOK {
			return fmt.Errorf("update rule %s: %w", id, apiError(status, resp))
		}
		return nil
	default:
		return fmt.Errorf("create rule %s: %w", id, apiError(status, resp))
	}
}
