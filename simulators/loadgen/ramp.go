package loadgen

import (
	"context"
	"errors"
	"fmt"
	"time"
)

// DefaultRampSteps are the offered rates a ramp tries, in order.
var DefaultRampSteps = []float64{1000, 2000, 3000, 5000, 7500, 10000, 15000, 20000, 30000, 40000, 50000, 60000, 80000, 100000}

// Ramp defaults.
const (
	DefaultStepDuration = 10 * time.Second
	// DefaultTolerance is how far below the offered rate the stored rate
	// may fall before a step fails.
	DefaultTolerance = 0.05
	// DefaultDrainAllowance is how long after publishing a system may
	// still be storing without counting as behind: it covers a flush
	// interval (Telegraf's is 1 s, infrawatch's 100 ms). A system that
	// falls behind builds a backlog that grows with the step, so its drain
	// exceeds this.
	DefaultDrainAllowance = 2 * time.Second
)

// RampOptions configures Ramp.
type RampOptions struct {
	// Run is the base of every step; its Rate and Duration are replaced.
	Run Options
	// Steps are the offered rates, ascending; DefaultRampSteps when empty.
	Steps []float64
	// StepDuration is each step's publishing phase.
	StepDuration time.Duration
	// Tolerance: a step fails when stored/s < (1-Tolerance) × offered
	// and the drain took longer than DrainAllowance.
	Tolerance float64
	// DrainAllowance: DefaultDrainAllowance when zero.
	DrainAllowance time.Duration
	// OnStep is called after each step (progress output); may be nil.
	OnStep func(Step)
}

// Step is one rate of a ramp and its verdict.
type Step struct {
	Result
	Pass   bool   `json:"pass"`
	Reason string `json:"reason,omitempty"` // why it failed
}

// RampResult is a ramp's table and its best rate.
type RampResult struct {
	Steps []Step `json:"steps"`
	// Best is the highest offered rate that passed (0 when none did);
	// BestStoredRate is the stored rate measured at that step.
	Best           float64 `json:"best_rate"`
	BestStoredRate float64 `json:"best_stored_rate"`
	StoppedBy      string  `json:"stopped_by"`
}

// Ramp runs steps of increasing rate against one system, each with fresh
// devices, and stops at the first step that loses a reading or whose
// stored rate falls more than Tolerance below the offered rate.
func Ramp(ctx context.Context, o RampOptions) (*RampResult, error) {
	if len(o.Steps) == 0 {
		o.Steps = DefaultRampSteps
	}
	if o.StepDuration == 0 {
		o.StepDuration = DefaultStepDuration
	}
	if o.Tolerance == 0 {
		o.Tolerance = DefaultTolerance
	}
	if o.DrainAllowance == 0 {
		o.DrainAllowance = DefaultDrainAllowance
	}
	if o.Tolerance < 0 || o.Tolerance >= 1 {
		return nil, fmt.Errorf("tolerance: %g is not in [0, 1)", o.Tolerance)
	}
	for i, r := range o.Steps {
		if i > 0 && r <= o.Steps[i-1] {
			return nil, errors.New("steps: rates must ascend")
		}
	}
	out := &RampResult{StoppedBy: "last step passed"}
	base, err := randomHex(3)
	if err != nil {
		return nil, err
	}
	for i, rate := range o.Steps {
		ro := o.Run
		ro.Rate, ro.Duration = rate, o.StepDuration
		ro.RunID = fmt.Sprintf("%sr%d", base, i)
		r, err := Run(ctx, ro)
		if err != nil {
			return out, fmt.Errorf("ramp step %g/s: %w", rate, err)
		}
		st := judge(r, o.Tolerance, o.DrainAllowance)
		out.Steps = append(out.Steps, st)
		if o.OnStep != nil {
			o.OnStep(st)
		}
		if !st.Pass {
			out.StoppedBy = fmt.Sprintf("%g/s: %s", rate, st.Reason)
			break
		}
		out.Best, out.BestStoredRate = rate, r.StoredRate
	}
	return out, nil
}

// judge decides whether a step passed.
func judge(r *Result, tolerance float64, drainAllowance time.Duration) Step {
	st := Step{Result: *r, Pass: true}
	floor := (1 - tolerance) * r.OfferedRate
	switch {
	case r.Lost > 0:
		st.Reason = fmt.Sprintf("%d acknowledged readings not stored", r.Lost)
	case r.PublishErrors > 0:
		st.Reason = fmt.Sprintf("%d publishes failed or were not acknowledged in time", r.PublishErrors)
	case r.Rejected > 0 || r.Dropped > 0:
		st.Reason = fmt.Sprintf("%.0f rejected, %.0f dropped by ingest", r.Rejected, r.Dropped)
	case r.Stored < r.Sent:
		st.Reason = fmt.Sprintf("%d of %d sent readings stored", r.Stored, r.Sent)
	case r.SendRate < floor:
		st.Reason = fmt.Sprintf("sent only %.0f/s: the system pushed back (or the load generator is CPU-bound)", r.SendRate)
	case r.StoredRate < floor && r.DrainS > drainAllowance.Seconds():
		st.Reason = fmt.Sprintf("stored %.0f/s, more than %.0f%% below the offered rate, still storing %.1fs after publishing ended",
			r.StoredRate, tolerance*100, r.DrainS)
	default:
		return st
	}
	st.Pass = false
	return st
}
