// Package history answers planners' questions about the past: windowed
// aggregates of a metric per device, site, domain or type, availability per
// device, and the hourly rollup tier that keeps year-long questions cheap.
package history
