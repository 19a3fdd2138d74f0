// Package configs owns infrawatch's configuration: the Config struct, its
// defaults (the embedded, commented infrawatch.yaml, which is the reference of
// every key), loading from a YAML file plus INFRAWATCH_<SECTION>_<KEY>
// environment overrides, and validation that reports every problem at once,
// each naming its key and where the value came from.
package configs
