package loadgen

import (
	"fmt"
	"io"
	"text/tabwriter"
)

// WriteTable prints r for people.
func (r *Result) WriteTable(w io.Writer) error {
	tw := tabwriter.NewWriter(w, 0, 0, 2, ' ', 0)
	ack := "acknowledged (PUBACK)"
	if r.QoS == 0 {
		ack = "acknowledged (QoS 0: written)"
	}
	fmt.Fprintf(tw, "bench run %s: %d devices on %d connections, QoS %d, %.0f readings/s offered for %.0fs, %.0f-byte payloads\n",
		r.RunID, r.Devices, r.Connections, r.QoS, r.OfferedRate, r.DurationS, r.PayloadSize)
	fmt.Fprintf(tw, "  sent\t%d\t(%.0f/s over %.1fs)\n", r.Sent, r.SendRate, r.PublishS)
	fmt.Fprintf(tw, "  %s\t%d\t(%d publish errors)\n", ack, r.Acknowledged, r.PublishErrors)
	if r.Target == "direct" {
		fmt.Fprintf(tw, "  stored (counted in InfluxDB)\t%d\t(InfluxDB accepted %.0f points)\n", r.Stored, r.ReportedStored)
	} else {
		fmt.Fprintf(tw, "  stored (counted in InfluxDB)\t%d\t(infrawatch reports %.0f; %.0f rejected, %.0f dropped)\n",
			r.Stored, r.ReportedStored, r.Rejected, r.Dropped)
	}
	verdict := "OK"
	if !r.ZeroLoss() {
		verdict = "LOSS"
	}
	fmt.Fprintf(tw, "  lost = acknowledged - stored\t%d\t%s\n", r.Lost, verdict)
	fmt.Fprintf(tw, "  throughput\t%.0f stored/s\t(drained %.1fs after publishing ended)\n", r.StoredRate, r.DrainS)
	fmt.Fprintf(tw, "  lag publish → stored\tp50 %s, p99 %s\t(ingest lag histogram, interpolated; top bucket ≤ %s)\n",
		fmtMs(r.LagP50Ms), fmtMs(r.LagP99Ms), fmtMs(r.LagMaxMs))
	writer := "ingest"
	if r.Target == "direct" {
		writer = "all (influxd's count)"
	}
	fmt.Fprintf(tw, "  InfluxDB writes by %s\t%d\t(mean %.0f points, %.1f ms each)\n", writer, r.Writes, r.MeanBatch, r.MeanWriteMs)
	for _, name := range sortedNames(r.Procs) {
		u := r.Procs[name]
		mem := ""
		if u.PID > 0 {
			mem = fmt.Sprintf("RSS %s, peak %s", mib(u.RSSBytes), mib(u.PeakRSSBytes))
		}
		fmt.Fprintf(tw, "  CPU %s\t%.4f s / 1000 stored\t(%.1f s total) %s\n", name, u.CPUPer1000, u.CPUSeconds, mem)
	}
	fmt.Fprintf(tw, "  machine\t%d cores\tother processes used %.1f CPU s (%.2f cores) over the %.0fs measured%s\n",
		r.Cores, r.OtherCPUSeconds, r.OtherCores(), r.MeasuredS, noisy(r))
	if ws := r.WS; ws != nil {
		closed := ""
		if ws.ClosedByServer > 0 {
			closed = fmt.Sprintf(", close codes %v", ws.CloseCodes)
		}
		watch := "all readings"
		if ws.Subscribe == WSSite {
			watch = fmt.Sprintf("one site's readings (%d devices)", WSSiteDevices)
		}
		fmt.Fprintf(tw, "  websocket clients\t%d\t(each subscribed to %s, batch mode, in %.1fs; %d closed by the server%s)\n",
			ws.Connected, watch, ws.ConnectS, ws.ClosedByServer, closed)
		perClient := 0.0
		if ws.Connected > 0 && r.PublishS > 0 {
			perClient = float64(ws.Frames) / float64(ws.Connected) / r.PublishS
		}
		fmt.Fprintf(tw, "  websocket messages received\t%d\t(%.1f per client per second)\n", ws.Frames, perClient)
		fmt.Fprintf(tw, "  reading events received\t%d\tof %d = stored readings of the devices each client watches (hub: %.0f sent, %.0f coalesced, %.0f clients dropped)\n",
			ws.Readings, ws.Expected, ws.SentByHub, ws.Coalesced, ws.ClientsDropped)
		fmt.Fprintf(tw, "  latency publish → websocket\tp50 %s, p99 %s, p99.9 %s\t(max %s; over %d matched messages)\n",
			fmtMs(ws.P50Ms), fmtMs(ws.P99Ms), fmtMs(ws.P999Ms), fmtMs(ws.MaxMs), ws.Matched)
	}
	return tw.Flush()
}

// noisy warns when other work took a fifth of the machine or more.
func noisy(r *Result) string {
	if r.Cores > 0 && r.OtherCores() >= 0.2*float64(r.Cores) {
		return ": NOISY, rerun on a quiet machine"
	}
	return ""
}

// WriteTable prints the ramp's steps and its best rate.
func (rr *RampResult) WriteTable(w io.Writer) error {
	tw := tabwriter.NewWriter(w, 0, 0, 2, ' ', tabwriter.AlignRight)
	fmt.Fprintln(tw, "offered/s\tsent/s\tstored/s\tsent\tacked\tstored\tlost\tdrain\tp50\tp99\tCPU s/1k pipeline\tinfluxd\tloadgen\tother cores\tverdict\t")
	for _, s := range rr.Steps {
		verdict := "pass"
		if !s.Pass {
			verdict = "FAIL: " + s.Reason
		}
		fmt.Fprintf(tw, "%.0f\t%.0f\t%.0f\t%d\t%d\t%d\t%d\t%.1fs\t%s\t%s\t%.3f\t%.3f\t%.3f\t%.2f\t%s\t\n",
			s.OfferedRate, s.SendRate, s.StoredRate, s.Sent, s.Acknowledged, s.Stored, s.Lost, s.DrainS,
			fmtMs(s.LagP50Ms), fmtMs(s.LagP99Ms),
			s.PipelineCPUPer1000(), s.Procs["influxd"].CPUPer1000, s.Procs["loadgen"].CPUPer1000, s.OtherCores(), verdict)
	}
	if err := tw.Flush(); err != nil {
		return err
	}
	if rr.Best > 0 {
		_, err := fmt.Fprintf(w, "highest zero-loss rate: %.0f readings/s offered (%.0f stored/s); stopped by %s\n",
			rr.Best, rr.BestStoredRate, rr.StoppedBy)
		return err
	}
	_, err := fmt.Fprintf(w, "no step passed; stopped by %s\n", rr.StoppedBy)
	return err
}

func fmtMs(v float64) string {
	switch {
	case v < 0:
		return "n/a"
	case v < 10:
		return fmt.Sprintf("%.1fms", v)
	}
	return fmt.Sprintf("%.0fms", v)
}

func mib(b int64) string { return fmt.Sprintf("%.0f MiB", float64(b)/(1<<20)) }
