package broker

import (
	"log/slog"
	"regexp"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/infrawatch/infrawatch/telemetry"
)

func TestValidID(t *testing.T) {
	for _, tc := range []struct {
		id string
		ok bool
	}{
		{"d1", true},
		{"Traffic_Counter-07", true},
		{strings.Repeat("a", 64), true},
		{"", false},
		{strings.Repeat("a", 65), false},
		{"a+b", false},
		{"a#b", false},
		{"a/b", false},
		{"a b", false},
		{"a,b", false},
		{"a=b", false},
		{"a\x00b", false},
		{"\xff\xfe", false},
		{"é", false},
		{"$SYS", false},
	} {
		assert.Equal(t, tc.ok, telemetry.ValidID(tc.id), "%q", tc.id)
	}
}

func FuzzValidID(f *testing.F) {
	re := regexp.MustCompile(idPattern)
	for _, s := range []string{"d1", "", "a+b", "a\x00", "\xff", strings.Repeat("x", 64), strings.Repeat("x", 65)} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, s string) {
		// regexp matches runes, not bytes; only valid ASCII can match it
		// anyway, so the two must agree on every input.
		if got, want := telemetry.ValidID(s), re.MatchString(s); got != want {
			t.Fatalf("ValidID(%q) = %v, regexp says %v", s, got, want)
		}
	})
}

func TestACL(t *testing.T) {
	device := identity{kind: kindDevice, name: "d1"}
	viewer := identity{kind: kindPerson, role: RoleViewer}
	operator := identity{kind: kindPerson, role: RoleOperator}
	admin := identity{kind: kindPerson, role: RoleAdmin}
	service := identity{kind: kindService}
	nobody := identity{}

	pub := []struct {
		id    identity
		topic string
		ok    bool
	}{
		{device, "devices/d1/telemetry", true},
		{device, "devices/d1/status", true},
		{device, "gateways/d1/telemetry", true},
		{device, "devices/d2/telemetry", false},
		{device, "devices/d1", false},
		{device, "devices/d1/", false},
		{device, "devices/d10/telemetry", false},
		{device, "devices/d1/+", false}, // a will topic with a wildcard
		{device, "devices/d1/#", false},
		{device, "alerts/x/d1", false},
		{device, "infrawatch/deadletter/x", false},
		{viewer, "alerts/s/d1", false},
		{admin, "alerts/s/d1", false},
		{admin, "infrawatch/deadletter/x", false},
		{service, "alerts/s/d1", true},
		{service, "infrawatch/deadletter/bad_value", true},
		{service, "devices/d1/telemetry", false},
		{service, "infrawatch/other", false},
		{nobody, "devices/d1/telemetry", false},
	}
	for _, tc := range pub {
		assert.Equal(t, tc.ok, tc.id.mayPublish(tc.topic), "%v publish %q", tc.id, tc.topic)
	}

	sub := []struct {
		id     identity
		filter string
		ok     bool
	}{
		{device, "devices/d1/#", true},
		{device, "devices/d1/commands", true},
		{device, "devices/d1/+/x", true},
		{device, "devices/d1", false},
		{device, "devices/+/commands", false},
		{device, "devices/#", false},
		{device, "#", false},
		{device, "devices/d2/#", false},
		{device, "gateways/d1/#", false},
		{device, "$share/g/devices/d1/#", false},
		{viewer, "alerts/#", true},
		{viewer, "alerts/site1/+", true},
		{viewer, "alerts/site1/d1", true}, // also how a delivery is checked
		{viewer, "alerts", false},
		{viewer, "#", false},
		{viewer, "+/site1/d1", false},
		{viewer, "infrawatch/deadletter/#", false},
		{operator, "alerts/#", true},
		{operator, "infrawatch/deadletter/#", false},
		{admin, "alerts/#", true},
		{admin, "infrawatch/deadletter/#", true},
		{admin, "infrawatch/#", false},
		{admin, "devices/#", false},
		{identity{kind: kindPerson, role: "root"}, "alerts/#", false},
		{service, "#", true},
		{service, "$share/infrawatch/devices/+/telemetry", true},
		{nobody, "alerts/#", false},
	}
	for _, tc := range sub {
		assert.Equal(t, tc.ok, tc.id.maySubscribe(tc.filter), "%v subscribe %q", tc.id, tc.filter)
	}
}

func TestOptionsValidate(t *testing.T) {
	good := func() Options {
		o := Options{Auth: &fakeAuth{}, ServicePassword: "pw"}
		o.setDefaults()
		return o
	}
	o := good()
	require.NoError(t, o.Validate())
	assert.Equal(t, DefaultListen, o.Listen)
	assert.Equal(t, "infrawatch", o.ServiceUser)
	assert.Equal(t, 1024, o.MaxPendingWrites)
	assert.Equal(t, 65535, o.ReceiveMaximum)
	assert.Equal(t, 65535, o.MaxInflight)

	for _, tc := range []struct {
		field string
		mod   func(*Options)
	}{
		{"Auth", func(o *Options) { o.Auth = nil }},
		{"ServiceUser", func(o *Options) { o.ServiceUser = "token" }},
		{"ServiceUser", func(o *Options) { o.ServiceUser = "in/fra" }},
		{"ServicePassword", func(o *Options) { o.ServicePassword = "" }},
		{"MaxPendingWrites", func(o *Options) { o.MaxPendingWrites = -1 }},
		{"ReceiveMaximum", func(o *Options) { o.ReceiveMaximum = 70000 }},
		{"MaxInflight", func(o *Options) { o.MaxInflight = 70000 }},
		{"MaxSessionExpiry", func(o *Options) { o.MaxSessionExpiry = time.Millisecond }},
	} {
		o := good()
		tc.mod(&o)
		err := o.Validate()
		require.Error(t, err, tc.field)
		assert.Contains(t, err.Error(), tc.field+":")
	}

	_, err := New(Options{})
	require.Error(t, err)
	assert.Contains(t, err.Error(), "Auth:")
	assert.Contains(t, err.Error(), "ServicePassword:")
}

func TestMinLevel(t *testing.T) {
	var buf strings.Builder
	log := slog.New(minLevel{Handler: slog.NewTextHandler(&buf, &slog.HandlerOptions{Level: slog.LevelDebug}), min: slog.LevelWarn}).With("listener", "tcp")
	log.Info("client connected")
	log.Warn("", "error", "EOF")
	log.Warn("error processing packet", "client", "d1")
	out := buf.String()
	assert.NotContains(t, out, "client connected")
	assert.NotContains(t, out, "EOF")
	assert.Contains(t, out, "error processing packet")
	assert.Contains(t, out, "listener=tcp")
}
