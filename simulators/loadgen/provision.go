package loadgen

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"sync"
	"time"
)

// provisionConcurrency bounds the API requests in flight while provisioning.
const provisionConcurrency = 16

var apiClient = &http.Client{Timeout: 15 * time.Second}

// provision registers ids as bench devices (expected interval in seconds) through
// POST /api/v1/devices and returns each one's MQTT secret. Transient
// failures (connection errors, 429, 502-504) are retried a few times; the
// first lasting error stops the rest.
func provision(ctx context.Context, apiURL, token string, ids []string, interval int) (map[string]string, error) {
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	var (
		mu       sync.Mutex
		secrets  = make(map[string]string, len(ids))
		firstErr error
		wg       sync.WaitGroup
		sem      = make(chan struct{}, provisionConcurrency)
	)
	for _, id := range ids {
		select {
		case sem <- struct{}{}:
		case <-ctx.Done():
		}
		if ctx.Err() != nil {
			break
		}
		wg.Add(1)
		go func() {
			defer wg.Done()
			defer func() { <-sem }()
			secret, err := createDevice(ctx, apiURL, token, id, interval)
			mu.Lock()
			defer mu.Unlock()
			if err != nil {
				if firstErr == nil {
					firstErr = fmt.Errorf("provision device %s: %w", id, err)
					cancel()
				}
				return
			}
			secrets[id] = secret
		}()
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

type deviceBody struct {
	ID               string `json:"id"`
	Name             string `json:"name"`
	Domain           string `json:"domain"`
	Type             string `json:"type"`
	Site             string `json:"site"`
	ExpectedInterval int    `json:"expected_interval"`
}

func createDevice(ctx context.Context, apiURL, token, id string, interval int) (string, error) {
	body, err := json.Marshal(deviceBody{ID: id, Name: "bench " + id, Domain: DeviceDomain, Type: DeviceType,
		Site: DeviceSite, ExpectedInterval: interval})
	if err != nil {
		return "", fmt.Errorf("encode device: %w", err)
	}
	const attempts = 5
	backoff := 200 * time.Millisecond
	for attempt := 1; ; attempt++ {
		status, answer, err := postJSON(ctx, apiURL+"/api/v1/devices", token, body)
		retry := err != nil || status == http.StatusTooManyRequests || (status >= 502 && status <= 504)
		if !retry {
			if status != http.StatusCreated {
				return "", fmt.Errorf("POST /api/v1/devices: HTTP %d: %.200s", status, answer)
			}
			var ans struct {
				Secret string `json:"secret"`
			}
			if err := json.Unmarshal(answer, &ans); err != nil || ans.Secret == "" {
				return "", errors.New("POST /api/v1/devices: the answer carries no secret")
			}
			return ans.Secret, nil
		}
		if attempt == attempts || ctx.Err() != nil {
			if err == nil {
				err = fmt.Errorf("HTTP %d: %.200s", status, answer)
			}
			return "", fmt.Errorf("POST /api/v1/devices after %d attempts: %w", attempt, err)
		}
		select {
		case <-ctx.Done():
			return "", ctx.Err()
		case <-time.After(backoff):
		}
		backoff *= 2
	}
}

func postJSON(ctx context.Context, u, token string, body []byte) (int, []byte, error) {
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, u, bytes.NewReader(body))
	if err != nil {
		return 0, nil, fmt.Errorf("build request: %w", err)
	}
	req.Header.Set("Authorization", "Bearer "+token)
	req.Header.Set("Content-Type", "application/json")
	resp, err := apiClient.Do(req)
	if err != nil {
		return 0, nil, err
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(io.LimitReader(resp.Body, 1<<20))
	if err != nil {
		return 0, nil, fmt.Errorf("read answer: %w", err)
	}
	return resp.StatusCode, b, nil
}
