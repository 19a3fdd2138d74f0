package simulators

import "time"

// simClock maps wall time to simulated time: from sim0 at wall0 it runs
// speed times faster. When it started in the past and runs faster than the
// wall clock, it stops at the wall clock once it has caught up and from
// then on runs live, so that timestamps never run ahead of time.
type simClock struct {
	wall0, sim0 time.Time
	speed       float64
	// catchUp is the wall time at which simulated time reaches the wall
	// clock; zero when it never does (speed 1, or a start in the future).
	catchUp time.Time
}

func newSimClock(wall0, sim0 time.Time, speed float64) simClock {
	if sim0.IsZero() {
		sim0 = wall0
	}
	if speed < 1 {
		speed = 1
	}
	c := simClock{wall0: wall0, sim0: sim0, speed: speed}
	if speed > 1 && !sim0.After(wall0) {
		// sim0 + (w-wall0)*speed = w  =>  w = wall0 + (wall0-sim0)/(speed-1)
		c.catchUp = wall0.Add(time.Duration(float64(wall0.Sub(sim0)) / (speed - 1)))
	}
	return c
}

// at is the simulated time at wall time w.
func (c simClock) at(w time.Time) time.Time {
	if !c.catchUp.IsZero() && !w.Before(c.catchUp) {
		return w
	}
	if c.speed == 1 {
		return c.sim0.Add(w.Sub(c.wall0))
	}
	return c.sim0.Add(time.Duration(float64(w.Sub(c.wall0)) * c.speed))
}

// speedAt is how fast simulated time runs at wall time w.
func (c simClock) speedAt(w time.Time) float64 {
	if !c.catchUp.IsZero() && !w.Before(c.catchUp) {
		return 1
	}
	return c.speed
}

// live reports whether simulated time has caught up with the wall clock.
func (c simClock) live(w time.Time) bool {
	return c.speed == 1 || (!c.catchUp.IsZero() && !w.Before(c.catchUp))
}
