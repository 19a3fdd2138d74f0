// Package dashboardapi owns infrawatch's HTTP surface: the Gin router, bearer
// token authentication and roles, the JSON error format, request limits,
// access logs and HTTP metrics, and the handlers for health, devices, the
// dashboard state snapshot and API tokens, described by an embedded OpenAPI
// document.
//
// It holds only small interfaces to the rest of the system (DeviceService,
// LiveState, TokenService, function hooks); cmd/infrawatch adapts the
// devices and auth packages to them. Nothing here imports those packages.
package dashboardapi
