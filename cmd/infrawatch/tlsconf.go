package main

import (
	"bytes"
	"crypto/tls"
	"errors"
	"fmt"

	"github.com/infrawatch/infrawatch/auth"
	"github.com/infrawatch/infrawatch/configs"
)

// brokerTLS loads broker.tls_cert/tls_key: the broker's listener config, and
// the config ingest uses to connect to that broker. Ingest talks to its own
// process's broker, so it trusts exactly that certificate (pinned), whatever
// names the certificate carries and whatever address the broker listens on.
// Both are nil when TLS is not configured.
func brokerTLS(c configs.BrokerConfig) (server, client *tls.Config, err error) {
	if c.TLSCert == "" {
		return nil, nil, nil
	}
	cert, err := tls.LoadX509KeyPair(c.TLSCert, c.TLSKey)
	if err != nil {
		return nil, nil, fmt.Errorf("load broker.tls_cert %s and broker.tls_key: %w", c.TLSCert, err)
	}
	leaf := cert.Certificate[0]
	server = &tls.Config{Certificates: []tls.Certificate{cert}, MinVersion: tls.VersionTLS12}
	client = &tls.Config{
		MinVersion: tls.VersionTLS12,
		// Verification is not skipped: VerifyConnection below replaces the
		// name and chain check with an exact match on the certificate.
		InsecureSkipVerify: true, //nolint:gosec // pinned in VerifyConnection
		VerifyConnection: func(cs tls.ConnectionState) error {
			if len(cs.PeerCertificates) == 0 || !bytes.Equal(cs.PeerCertificates[0].Raw, leaf) {
				return errors.New("the broker's certificate is not broker.tls_cert")
			}
			return nil
		},
	}
	return server, client, nil
}

// failureLimiter builds the failed-authentication limiter of auth.*.
func failureLimiter(c configs.AuthConfig) *auth.FailureLimiter {
	return auth.NewFailureLimiter(auth.FailureLimiterOptions{
		PerMinute: float64(c.FailuresPerMinute), Burst: c.FailureBurst,
	})
}
