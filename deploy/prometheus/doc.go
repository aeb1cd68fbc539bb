// Package prometheus holds no Go code: rules_test.go checks the alerting
// rules beside it (hapbx-rules.yml) against the metrics the code
// registers, and runs promtool's check and unit tests (hapbx-rules.test.yml)
// when promtool is installed.
package prometheus
