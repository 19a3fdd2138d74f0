package loadgen

import (
	"fmt"
	"io"
	"slices"
	"strings"
	"text/tabwriter"
)

// SystemRun is one system's part of a side-by-side comparison: a run at a
// fixed rate, or a ramp.
type SystemRun struct {
	Mode Mode        `json:"mode"`
	Run  *Result     `json:"run,omitempty"`
	Ramp *RampResult `json:"ramp,omitempty"`
}

// Comparison is the same workload through several systems.
type Comparison struct {
	Systems []SystemRun `json:"systems"`
}

// at is the run a system's figures are read from: the run, or a ramp's
// step at rate (its last step when it did not reach rate).
func (s SystemRun) at(rate float64) *Result {
	if s.Run != nil {
		return s.Run
	}
	if s.Ramp == nil || len(s.Ramp.Steps) == 0 {
		return nil
	}
	for i := range s.Ramp.Steps {
		if s.Ramp.Steps[i].OfferedRate == rate {
			return &s.Ramp.Steps[i].Result
		}
	}
	return &s.Ramp.Steps[len(s.Ramp.Steps)-1].Result
}

// commonRate is, for ramps, the highest offered rate every system passed
// (the first step's when there is none), so that CPU and memory are
// compared at the same load; 0 for runs.
func (c *Comparison) commonRate() float64 {
	best := -1.0
	for _, s := range c.Systems {
		if s.Ramp == nil || len(s.Ramp.Steps) == 0 {
			return 0
		}
		if best < 0 || s.Ramp.Best < best {
			best = s.Ramp.Best
		}
	}
	if best <= 0 {
		return c.Systems[0].Ramp.Steps[0].OfferedRate
	}
	return best
}

// pipeline names the processes between the devices and InfluxDB.
func pipeline(r *Result) []string {
	var out []string
	for _, n := range sortedNames(r.Procs) {
		if n != "influxd" && n != "loadgen" {
			out = append(out, n)
		}
	}
	return out
}

// PipelineCPUPer1000 is the CPU seconds per 1,000 stored readings of the
// processes between the devices and InfluxDB (infrawatch; plus Mosquitto
// or Telegraf), without influxd and the load generator.
func (r *Result) PipelineCPUPer1000() float64 {
	var v float64
	for _, n := range pipeline(r) {
		v += r.Procs[n].CPUPer1000
	}
	return v
}

func (c *Comparison) find(m Mode) *SystemRun {
	for i := range c.Systems {
		if c.Systems[i].Mode == m {
			return &c.Systems[i]
		}
	}
	return nil
}

// WriteTable prints the systems side by side and the ratios of
// infrawatch (embedded broker) to Telegraf.
func (c *Comparison) WriteTable(w io.Writer) error {
	tw := tabwriter.NewWriter(w, 0, 0, 2, ' ', tabwriter.AlignRight)
	rate := c.commonRate()
	row := func(name string, f func(s SystemRun, r *Result) string) {
		cells := []string{name}
		for _, s := range c.Systems {
			r := s.at(rate)
			if r == nil {
				cells = append(cells, "-")
				continue
			}
			cells = append(cells, f(s, r))
		}
		fmt.Fprintln(tw, strings.Join(cells, "\t")+"\t")
	}
	head := []string{""}
	for _, s := range c.Systems {
		head = append(head, systemLabel(s.Mode))
	}
	fmt.Fprintln(tw, strings.Join(head, "\t")+"\t")
	ramp := len(c.Systems) > 0 && c.Systems[0].Ramp != nil
	if ramp {
		row("highest zero-loss rate/s", func(s SystemRun, _ *Result) string {
			if s.Ramp.Best == 0 {
				return "none"
			}
			return fmt.Sprintf("%.0f", s.Ramp.Best)
		})
		row("stopped by", func(s SystemRun, _ *Result) string { return s.Ramp.StoppedBy })
		row("figures below: step at", func(_ SystemRun, r *Result) string {
			return fmt.Sprintf("%.0f/s", r.OfferedRate)
		})
	}
	row("offered/s", func(_ SystemRun, r *Result) string { return fmt.Sprintf("%.0f", r.OfferedRate) })
	row("sent/s", func(_ SystemRun, r *Result) string { return fmt.Sprintf("%.0f", r.SendRate) })
	row("stored/s", func(_ SystemRun, r *Result) string { return fmt.Sprintf("%.0f", r.StoredRate) })
	row("sent / acked / stored", func(_ SystemRun, r *Result) string {
		return fmt.Sprintf("%d / %d / %d", r.Sent, r.Acknowledged, r.Stored)
	})
	row("lost (acked - stored)", func(_ SystemRun, r *Result) string {
		v := "OK"
		if !r.ZeroLoss() {
			v = "LOSS"
		}
		return fmt.Sprintf("%d %s", r.Lost, v)
	})
	row("drain after publishing", func(_ SystemRun, r *Result) string { return fmt.Sprintf("%.1fs", r.DrainS) })
	row("lag publish→stored p50/p99", func(_ SystemRun, r *Result) string {
		return fmt.Sprintf("%s / %s", fmtMs(r.LagP50Ms), fmtMs(r.LagP99Ms))
	})
	row("InfluxDB writes, mean points", func(_ SystemRun, r *Result) string {
		return fmt.Sprintf("%d, %.0f", r.Writes, r.MeanBatch)
	})
	row("pipeline CPU s/1k stored", func(_ SystemRun, r *Result) string {
		return fmt.Sprintf("%.4f", r.PipelineCPUPer1000())
	})
	for _, name := range []string{"infrawatch", "mosquitto", "telegraf", "influxd", "loadgen"} {
		row("  "+name+" CPU s/1k", func(_ SystemRun, r *Result) string {
			u, ok := r.Procs[name]
			if !ok {
				return "-"
			}
			return fmt.Sprintf("%.4f", u.CPUPer1000)
		})
	}
	row("pipeline peak RSS", func(_ SystemRun, r *Result) string {
		var parts []string
		for _, n := range pipeline(r) {
			parts = append(parts, n+" "+mib(r.Procs[n].PeakRSSBytes))
		}
		return strings.Join(parts, " + ")
	})
	row("influxd peak RSS", func(_ SystemRun, r *Result) string { return mib(r.Procs["influxd"].PeakRSSBytes) })
	row("payload bytes (mean)", func(_ SystemRun, r *Result) string { return fmt.Sprintf("%.0f", r.PayloadSize) })
	row("other cores busy", func(_ SystemRun, r *Result) string {
		return fmt.Sprintf("%.2f of %d%s", r.OtherCores(), r.Cores, noisy(r))
	})
	if err := tw.Flush(); err != nil {
		return err
	}
	fmt.Fprintln(w, "pipeline = the processes between the devices and InfluxDB (without influxd and the load generator).")
	fmt.Fprintln(w, "Every system gets byte-identical payloads {\"ts\":..,\"values\":{..3 fields..}}; Telegraf's json parser flattens values.* into values_* fields (it has no \"values\" convention), so its stored points carry the same three numbers.")

	emb, tg := c.find(ModeEmbedded), c.find(ModeTelegraf)
	if emb == nil || tg == nil || emb.at(rate) == nil || tg.at(rate) == nil {
		return nil
	}
	er, tr := emb.at(rate), tg.at(rate)
	if er.OfferedRate != tr.OfferedRate {
		fmt.Fprintf(w, "(CPU figures at different rates: %.0f/s vs %.0f/s; compare with care)\n", er.OfferedRate, tr.OfferedRate)
	}
	if ramp {
		if tg.Ramp.Best > 0 {
			fmt.Fprintf(w, "ratio infrawatch (embedded) / Telegraf, highest zero-loss rate: %.2f (%.0f vs %.0f readings/s)\n",
				emb.Ramp.Best/tg.Ramp.Best, emb.Ramp.Best, tg.Ramp.Best)
		} else {
			fmt.Fprintln(w, "ratio of highest zero-loss rates: Telegraf passed no step")
		}
	} else if tr.StoredRate > 0 {
		fmt.Fprintf(w, "ratio infrawatch (embedded) / Telegraf, stored/s at the same offered rate: %.2f (both zero-loss: %v; "+
			"the zero-loss rate ratio needs --ramp)\n", er.StoredRate/tr.StoredRate, er.ZeroLoss() && tr.ZeroLoss())
	}
	if t := tr.PipelineCPUPer1000(); t > 0 {
		cr := c.CPURatios()
		fmt.Fprintf(w, "ratio infrawatch (embedded) / Telegraf+Mosquitto, CPU per stored reading at %.0f/s: %.2f (%.4f vs %.4f s/1k)",
			er.OfferedRate, cr.VsTelegrafPipeline, er.PipelineCPUPer1000(), t)
		if cr.VsTelegraf > 0 {
			fmt.Fprintf(w, "; vs Telegraf alone %.2f", cr.VsTelegraf)
		}
		fmt.Fprintln(w)
		// Both behind the same Mosquitto: each ingester's own process.
		if cr.BehindMosquitto > 0 {
			mi := c.find(ModeMosquitto).at(rate).Procs["infrawatch"].CPUPer1000
			fmt.Fprintf(w, "ratio infrawatch process / Telegraf process, both behind Mosquitto, CPU per stored reading: %.2f (%.4f vs %.4f s/1k)\n",
				cr.BehindMosquitto, mi, tr.Procs["telegraf"].CPUPer1000)
		}
		withDB := func(r *Result) float64 { return r.PipelineCPUPer1000() + r.Procs["influxd"].CPUPer1000 }
		if t := withDB(tr); t > 0 {
			fmt.Fprintf(w, "ratio with influxd included: %.2f (%.4f vs %.4f s/1k)\n", withDB(er)/t, withDB(er), t)
		}
	}
	return nil
}

// CPURatios are a comparison's ratios of CPU per stored reading; zero where
// a system or a figure is missing.
type CPURatios struct {
	// VsTelegrafPipeline: infrawatch with its embedded broker over
	// Telegraf plus the Mosquitto it needs.
	VsTelegrafPipeline float64 `json:"vs_telegraf_pipeline"`
	// VsTelegraf: infrawatch with its embedded broker over the Telegraf
	// process alone.
	VsTelegraf float64 `json:"vs_telegraf"`
	// BehindMosquitto: the two ingester processes behind the same broker.
	BehindMosquitto float64 `json:"behind_mosquitto"`
}

// CPURatios reads the ratios at the rate the table compares.
func (c *Comparison) CPURatios() CPURatios {
	var out CPURatios
	rate := c.commonRate()
	emb, tg := c.find(ModeEmbedded), c.find(ModeTelegraf)
	if emb == nil || tg == nil || emb.at(rate) == nil || tg.at(rate) == nil {
		return out
	}
	er, tr := emb.at(rate), tg.at(rate)
	ratio := func(a, b float64) float64 {
		if a <= 0 || b <= 0 {
			return 0
		}
		return a / b
	}
	ti := tr.Procs["telegraf"].CPUPer1000
	out.VsTelegrafPipeline = ratio(er.PipelineCPUPer1000(), tr.PipelineCPUPer1000())
	out.VsTelegraf = ratio(er.PipelineCPUPer1000(), ti)
	if mq := c.find(ModeMosquitto); mq != nil && mq.at(rate) != nil {
		out.BehindMosquitto = ratio(mq.at(rate).Procs["infrawatch"].CPUPer1000, ti)
	}
	return out
}

// WriteRepeatSummary prints the CPU ratios of repeated comparisons, one
// line per run and their medians: the CPU time a unit of work costs on a
// shared VM drifts from minute to minute, so one run's ratio is one draw
// of a spread (0.49–0.62 in four runs of the same build, BENCHMARKS.md).
func WriteRepeatSummary(w io.Writer, cs []Comparison) {
	if len(cs) < 2 {
		return
	}
	fmt.Fprintf(w, "\n=== CPU per stored reading over %d runs (each the three systems back to back) ===\n", len(cs))
	fmt.Fprintf(w, "%-8s %22s %22s %22s\n", "run", "embedded/Telegraf+Mq", "embedded/Telegraf", "behind Mq: iw/Telegraf")
	var pipe, alone, behind []float64
	for i := range cs {
		r := cs[i].CPURatios()
		fmt.Fprintf(w, "%-8d %22.2f %22.2f %22.2f\n", i+1, r.VsTelegrafPipeline, r.VsTelegraf, r.BehindMosquitto)
		pipe, alone, behind = append(pipe, r.VsTelegrafPipeline), append(alone, r.VsTelegraf), append(behind, r.BehindMosquitto)
	}
	fmt.Fprintf(w, "%-8s %22.2f %22.2f %22.2f\n", "median", median(pipe), median(alone), median(behind))
}

// median of vs (0 for none); vs is not changed.
func median(vs []float64) float64 {
	if len(vs) == 0 {
		return 0
	}
	s := slices.Clone(vs)
	slices.Sort(s)
	n := len(s)
	if n%2 == 1 {
		return s[n/2]
	}
	return (s[n/2-1] + s[n/2]) / 2
}

func systemLabel(m Mode) string {
	switch m {
	case ModeEmbedded:
		return "infrawatch (embedded broker)"
	case ModeMosquitto:
		return "infrawatch + Mosquitto"
	case ModeTelegraf:
		return "Telegraf + Mosquitto"
	}
	return string(m)
}
