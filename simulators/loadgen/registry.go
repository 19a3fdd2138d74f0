package loadgen

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"strconv"
	"sync"
	"sync/atomic"
	"text/tabwriter"
	"time"

	mqtt "github.com/eclipse/paho.mqtt.golang"
)

// registryConcurrency bounds the MQTT connections in progress while each
// registry device sends its one reading.
const registryConcurrency = 64

// registryInterval is the registry devices' expected interval: long, so
// they stay online through the measurement instead of turning stale and
// offline (status events are not what is measured).
const registryInterval = 3600

// RegistryOptions configures RegistryMemory.
type RegistryOptions struct {
	// APIURL, Token and BrokerURL reach the system (embedded broker: each
	// device publishes with its own credentials).
	APIURL, Token, BrokerURL string
	// PID is the infrawatch serve process whose memory is read.
	PID int
	// Counts are the registry sizes at which memory is read, ascending.
	Counts []int
	// Logger receives progress; discarded when nil.
	Logger *slog.Logger
}

// RegistryPoint is the memory of infrawatch at one registry size.
type RegistryPoint struct {
	Devices int `json:"devices"`
	// ProvisionS is how long creating the devices since the last point
	// took; CreateMs the mean time of one create over the last 1,000
	// (creates run provisionConcurrency at a time, so this is the
	// registry's serial cost at this size).
	ProvisionS float64 `json:"provision_s"`
	CreateMs   float64 `json:"create_ms_last_1000"`
	PublishS   float64 `json:"publish_s"`
	// RSSBytes is VmRSS; LiveHeapBytes is the Go heap live after a GC of
	// the idle process (go_gc_heap_live_bytes; go_memstats_next_gc_bytes / 2
	// from a system that does not export it, right at GOGC=100 only);
	// HeapInuseBytes is go_memstats_heap_inuse_bytes at that moment.
	RSSBytes       int64 `json:"rss_bytes"`
	LiveHeapBytes  int64 `json:"live_heap_bytes"`
	HeapInuseBytes int64 `json:"heap_inuse_bytes"`
	// Per device: growth over the baseline divided by Devices.
	RSSPerDevice      float64 `json:"rss_bytes_per_device"`
	LiveHeapPerDevice float64 `json:"live_heap_bytes_per_device"`
}

// RegistryResult is the baseline and each point.
type RegistryResult struct {
	Baseline RegistryPoint   `json:"baseline"`
	Points   []RegistryPoint `json:"points"`
}

// RegistryMemory provisions devices through the API up to each of
// o.Counts, gives each new device one reading (its live state), and reads
// infrawatch's memory at each size.
func RegistryMemory(ctx context.Context, o RegistryOptions) (*RegistryResult, error) {
	if o.Logger == nil {
		o.Logger = slog.New(slog.DiscardHandler)
	}
	if o.PID <= 0 {
		return nil, errors.New("pid: the infrawatch process to measure is needed")
	}
	for i, n := range o.Counts {
		if n < 1 || (i > 0 && n <= o.Counts[i-1]) {
			return nil, errors.New("counts: want ascending positive registry sizes")
		}
	}
	runID, err := randomHex(3)
	if err != nil {
		return nil, err
	}
	mem := func(devices int) (RegistryPoint, error) {
		m, err := awaitIdleGC(ctx, o.APIURL, time.Now(), o.Logger)
		if err != nil {
			return RegistryPoint{}, err
		}
		rss, _, err := procMemory(o.PID)
		if err != nil {
			return RegistryPoint{}, err
		}
		live := m.liveHeap
		if live == 0 { // a system without go_gc_heap_live_bytes, at GOGC=100
			live = m.nextGC / 2
		}
		return RegistryPoint{Devices: devices, RSSBytes: rss, LiveHeapBytes: int64(live),
			HeapInuseBytes: int64(m.heapInuse)}, nil
	}
	out := &RegistryResult{}
	if out.Baseline, err = mem(0); err != nil {
		return nil, err
	}
	have := 0
	for _, target := range o.Counts {
		ids := make([]string, 0, target-have)
		for i := have; i < target; i++ {
			ids = append(ids, "reg-"+runID+"-"+strconv.Itoa(i))
		}
		t0 := time.Now()
		var lastK []time.Duration
		secrets, err := provisionTimed(ctx, o.APIURL, o.Token, ids, &lastK)
		if err != nil {
			return out, err
		}
		provS := time.Since(t0).Seconds()
		o.Logger.Info("registry devices provisioned", "devices", target, "took", time.Since(t0).Round(time.Millisecond))
		before, err := scrape(ctx, o.APIURL)
		if err != nil {
			return out, err
		}
		t1 := time.Now()
		if err := publishOnce(ctx, o.BrokerURL, ids, secrets); err != nil {
			return out, err
		}
		// Wait until ingest stored them: the live state follows the store.
		ro := Options{APIURL: o.APIURL, DrainTimeout: time.Minute, Now: time.Now}
		if _, _, err := drain(ctx, ro, before, int64(len(ids))); err != nil {
			return out, err
		}
		pubS := time.Since(t1).Seconds()
		p, err := mem(target)
		if err != nil {
			return out, err
		}
		p.ProvisionS, p.PublishS = provS, pubS
		if len(lastK) > 0 {
			var sum time.Duration
			for _, d := range lastK {
				sum += d
			}
			p.CreateMs = ms(sum.Seconds() / float64(len(lastK)))
		}
		p.RSSPerDevice = float64(p.RSSBytes-out.Baseline.RSSBytes) / float64(target)
		p.LiveHeapPerDevice = float64(p.LiveHeapBytes-out.Baseline.LiveHeapBytes) / float64(target)
		out.Points = append(out.Points, p)
		o.Logger.Info("registry memory", "devices", target, "rss", p.RSSBytes, "rss_per_device", int(p.RSSPerDevice),
			"live_heap_per_device", int(p.LiveHeapPerDevice))
		have = target
	}
	return out, nil
}

// idleGCWait bounds the wait for a garbage collection of the idle process:
// the Go runtime forces one when none ran for 2 minutes.
const idleGCWait = 130 * time.Second

// awaitIdleGC waits until infrawatch ran a GC after since (the end of the
// bench's own activity), so that the live heap it reports is the idle
// process's, not one of the moment a provisioning request was in flight
// and the registry's old and new snapshots both alive. Past idleGCWait it
// returns the last sample.
func awaitIdleGC(ctx context.Context, apiURL string, since time.Time, log *slog.Logger) (metricsSample, error) {
	deadline := since.Add(idleGCWait)
	logged := false
	for {
		m, err := scrape(ctx, apiURL)
		if err != nil {
			return m, err
		}
		if m.lastGC >= float64(since.UnixNano())/1e9 || time.Now().After(deadline) {
			return m, nil
		}
		if !logged {
			log.Info("waiting for a GC of the idle process (at most 2 minutes)")
			logged = true
		}
		select {
		case <-ctx.Done():
			return m, ctx.Err()
		case <-time.After(time.Second):
		}
	}
}

// provisionTimed is provision with the duration of the last 1,000 creates
// recorded in lastK.
func provisionTimed(ctx context.Context, apiURL, token string, ids []string, lastK *[]time.Duration) (map[string]string, error) {
	const keep = 1000
	start := max(0, len(ids)-keep)
	secrets, err := provision(ctx, apiURL, token, ids[:start], registryInterval)
	if err != nil {
		return nil, err
	}
	var mu sync.Mutex
	rest := make(map[string]string, len(ids)-start)
	var wg sync.WaitGroup
	var firstErr error
	sem := make(chan struct{}, provisionConcurrency)
	for _, id := range ids[start:] {
		sem <- struct{}{}
		wg.Add(1)
		go func() {
			defer wg.Done()
			defer func() { <-sem }()
			t := time.Now()
			secret, err := createDevice(ctx, apiURL, token, id, registryInterval)
			d := time.Since(t)
			mu.Lock()
			defer mu.Unlock()
			if err != nil {
				if firstErr == nil {
					firstErr = fmt.Errorf("provision device %s: %w", id, err)
				}
				return
			}
			rest[id] = secret
			*lastK = append(*lastK, d)
		}()
	}
	wg.Wait()
	if firstErr != nil {
		return nil, firstErr
	}
	for id, s := range rest {
		secrets[id] = s
	}
	return secrets, nil
}

// publishOnce connects each device with its credentials, publishes one
// reading at QoS 1, waits for the PUBACK and disconnects.
func publishOnce(ctx context.Context, brokerURL string, ids []string, secrets map[string]string) error {
	var (
		wg       sync.WaitGroup
		sem      = make(chan struct{}, registryConcurrency)
		failed   atomic.Int64
		mu       sync.Mutex
		firstErr error
	)
	for _, id := range ids {
		if ctx.Err() != nil {
			break
		}
		sem <- struct{}{}
		wg.Add(1)
		go func() {
			defer wg.Done()
			defer func() { <-sem }()
			c := &conn{id: id, topic: "devices/" + id + "/telemetry"}
			client := mqtt.NewClient(mqtt.NewClientOptions().AddBroker(brokerURL).SetClientID(id).
				SetUsername(id).SetPassword(secrets[id]).SetProtocolVersion(4).SetCleanSession(true).
				SetAutoReconnect(false).SetConnectTimeout(10 * time.Second))
			err := func() error {
				tok := client.Connect()
				if !tok.WaitTimeout(15 * time.Second) {
					return errors.New("connect timed out")
				}
				if tok.Error() != nil {
					return fmt.Errorf("connect: %w", tok.Error())
				}
				defer client.Disconnect(50)
				payload, _ := c.reading(time.Now(), 0)
				tok = client.Publish(c.topic, 1, false, payload)
				if !tok.WaitTimeout(15 * time.Second) {
					return errors.New("publish timed out")
				}
				return tok.Error()
			}()
			if err != nil {
				failed.Add(1)
				mu.Lock()
				if firstErr == nil {
					firstErr = fmt.Errorf("device %s: %w", id, err)
				}
				mu.Unlock()
			}
		}()
	}
	wg.Wait()
	if firstErr != nil {
		return fmt.Errorf("one reading per registry device: %d failed, first: %w", failed.Load(), firstErr)
	}
	return ctx.Err()
}

// WriteTable prints the memory at each registry size.
func (rr *RegistryResult) WriteTable(w io.Writer) error {
	tw := tabwriter.NewWriter(w, 0, 0, 2, ' ', tabwriter.AlignRight)
	fmt.Fprintln(tw, "devices\tprovision s\tcreate ms (last 1k)\tRSS\tRSS/device\tlive heap\tlive heap/device\theap in use\t")
	b := rr.Baseline
	fmt.Fprintf(tw, "0\t\t\t%s\t\t%s\t\t%s\t\n", mib(b.RSSBytes), mib(b.LiveHeapBytes), mib(b.HeapInuseBytes))
	for _, p := range rr.Points {
		fmt.Fprintf(tw, "%d\t%.1f\t%.2f\t%s\t%.0f B\t%s\t%.0f B\t%s\t\n", p.Devices, p.ProvisionS, p.CreateMs,
			mib(p.RSSBytes), p.RSSPerDevice, mib(p.LiveHeapBytes), p.LiveHeapPerDevice, mib(p.HeapInuseBytes))
	}
	if err := tw.Flush(); err != nil {
		return err
	}
	for i := 1; i < len(rr.Points); i++ {
		a, b := rr.Points[i-1], rr.Points[i]
		n := float64(b.Devices - a.Devices)
		fmt.Fprintf(w, "growth %d → %d devices: RSS %.0f B/device, live heap %.0f B/device\n", a.Devices, b.Devices,
			float64(b.RSSBytes-a.RSSBytes)/n, float64(b.LiveHeapBytes-a.LiveHeapBytes)/n)
	}
	_, err := fmt.Fprintln(w, "live heap = go_gc_heap_live_bytes after a GC of the idle process; RSS includes freed memory the runtime has not returned")
	return err
}
